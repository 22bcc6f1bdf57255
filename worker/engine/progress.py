"""Callback types the engine uses to report progress and to learn that the caller wants to stop.

The engine calls ``progress(stage, done, total)`` after each unit of work, optionally with the
stage's metrics of that tick (``progress(stage, done, total, {"step": 3, "L_GA": 0.41})``),
and ``should_stop()`` at each batch boundary; when it returns ``True`` the engine raises
``errors.Cancelled``. Both are optional everywhere; ``report`` and ``check_stop`` make calling
them a one-liner.

``OneUnit`` and ``Rate`` turn the raw ticks into what a person watching wants: one unit per
stage that never runs backwards, and an ETA from the rate measured so far.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from worker.engine.errors import Cancelled

Stage = Literal["loading", "compressing", "aligning", "scoring", "ranking"]
STAGES: tuple[str, ...] = ("loading", "compressing", "aligning", "scoring", "ranking")

STAGE_UNITS: dict[str, str] = {
    "loading": "steps",
    "compressing": "steps",
    "aligning": "steps",
    "scoring": "samples",
    "ranking": "samples",
}
"""What each stage's progress counts (the API repeats this map; a test checks they agree)."""

Metrics = Mapping[str, float | int]
"""Numbers a stage measured at one tick (alignment: ``step``, ``L_GA``, ``KL``)."""


class ProgressFn(Protocol):
    """``(stage, done, total[, metrics])``; ``stage`` is one of ``STAGES``."""

    def __call__(
        self, stage: str, done: int, total: int, metrics: Metrics | None = None, /
    ) -> None: ...


EventFn = Callable[[str, dict[str, Any]], None]
"""``(message, data)``: something worth a line in the job's events (a batch halved, say)."""

StopFn = Callable[[], bool]
"""Returns ``True`` when the caller wants the engine to stop at the next batch boundary."""


def report(
    progress: ProgressFn | None,
    stage: str,
    done: int,
    total: int,
    metrics: Metrics | None = None,
) -> None:
    """Call ``progress`` if there is one, with the tick's ``metrics`` when there are some."""
    if progress is None:
        return
    if metrics:
        progress(stage, done, total, dict(metrics))
    else:
        progress(stage, done, total)


@dataclass
class OneUnit:
    """Keeps a stage in one unit that only grows, where the engine reports it in sub-phases.

    Proxy construction reports probe batches (``8/16``) and then layers (``13/210``) under one
    stage; a sub-phase starts when the total changes or ``done`` falls back. Each finished
    sub-phase's total is added to what follows, so the stage reads ``16/16``, ``29/226``, ...:
    steps done of steps known, never backwards.
    """

    _stage: str | None = None
    _offset: int = 0
    _total: int = 0
    _done: int = 0
    phase: int = 0
    """Sub-phase of the current stage (0, 1, ...): a rate measured in one phase says little
    about the next (a probe batch and a layer's factorisation cost differently)."""

    def __call__(self, stage: str, done: int, total: int) -> tuple[int, int]:
        """``(done, total)`` of ``stage`` in its one unit."""
        if stage != self._stage:
            self._stage, self._offset, self.phase = stage, 0, 0
        elif total != self._total or done < self._done:
            self._offset += self._total
            self.phase += 1
        self._total, self._done = total, done
        return self._offset + done, self._offset + total


@dataclass
class Rate:
    """Units per second within a stage, and the ETA of what remains at that rate.

    ``observe`` is called at every tick with a monotonic clock; the rate is measured from the
    first tick of the stage (or of its sub-phase: pass ``OneUnit.phase``), so units done before
    it, such as a shard's resumed samples, do not count.
    """

    _stage: tuple[str, int] | None = None
    _start: float = 0.0
    _start_done: int = 0

    def observe(
        self, stage: str, done: int, total: int, now: float, phase: int = 0
    ) -> tuple[float | None, float | None]:
        """``(rate per second, seconds left)``; None until a rate has been measured."""
        if (stage, phase) != self._stage:
            self._stage, self._start, self._start_done = (stage, phase), now, done
        elapsed, progressed = now - self._start, done - self._start_done
        if elapsed <= 0 or progressed <= 0:
            rate = eta = None
        else:
            rate = progressed / elapsed
            eta = max(total - done, 0) / rate
        return rate, eta


def emit(events: EventFn | None, message: str, data: dict[str, Any]) -> None:
    """Call ``events`` if there is one."""
    if events is not None:
        events(message, data)


def check_stop(should_stop: StopFn | None, stage: str) -> None:
    """Raise ``Cancelled`` if the caller asked to stop."""
    if should_stop is not None and should_stop():
        raise Cancelled(f"cancelled during {stage}")
