"""Callback types the engine uses to report progress and to learn that the caller wants to stop.

The engine calls ``progress(stage, done, total)`` after each unit of work and ``should_stop()`` at
each batch boundary; when it returns ``True`` the engine raises ``errors.Cancelled``. Both are
optional everywhere; ``report`` and ``check_stop`` make calling them a one-liner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from worker.engine.errors import Cancelled

Stage = Literal["loading", "compressing", "aligning", "scoring", "ranking"]
STAGES: tuple[str, ...] = ("loading", "compressing", "aligning", "scoring", "ranking")

ProgressFn = Callable[[str, int, int], None]
"""``(stage, done, total)``; ``stage`` is one of ``STAGES``."""

EventFn = Callable[[str, dict[str, Any]], None]
"""``(message, data)``: something worth a line in the job's events (a batch halved, say)."""

StopFn = Callable[[], bool]
"""Returns ``True`` when the caller wants the engine to stop at the next batch boundary."""


def report(progress: ProgressFn | None, stage: str, done: int, total: int) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(stage, done, total)


def emit(events: EventFn | None, message: str, data: dict[str, Any]) -> None:
    """Call ``events`` if there is one."""
    if events is not None:
        events(message, data)


def check_stop(should_stop: StopFn | None, stage: str) -> None:
    """Raise ``Cancelled`` if the caller asked to stop."""
    if should_stop is not None and should_stop():
        raise Cancelled(f"cancelled during {stage}")
