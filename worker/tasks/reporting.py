"""Progress and stop callbacks that bind the engine to one job's database row, its events, the
structured logs and the worker's metrics."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from service.config import get_settings
from service.db import session_scope
from service.jobs import repository as repo
from service.jobs import state
from service.logs import bind_values
from service.metrics import GPU_MEMORY, SAMPLES_SCORED, STAGE_SECONDS
from service.models import JobStage, JobStatus
from worker.engine.progress import STAGE_UNITS, Metrics, OneUnit, Rate

log = logging.getLogger(__name__)

# Stages the planning task shows; during shard scoring the engine's own "loading"/"scoring"
# reports only beat the heart, since several shards run at once.
_STAGES = {s.value: s for s in JobStage}


def observe_stage(stage: str, seconds: float) -> None:
    """One stage of one task took ``seconds`` (``iprox_stage_duration_seconds``)."""
    STAGE_SECONDS.labels(stage).observe(seconds)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class Reporter:
    """``progress(stage, done, total[, metrics])`` and ``should_stop()`` for the engine.

    The job row (progress, heartbeat) is written at most every ``interval_s`` seconds; a
    ``progress`` event (done, total, unit, rate, ETA, the tick's metrics) at most every
    ``event_interval_s`` (``IPROX_PROGRESS_EVENT_INTERVAL_S``), and always at a stage's first
    and last tick. Each event is also a log record. Stage changes and completions are always
    written."""

    def __init__(
        self,
        job_id: str,
        *,
        stages: bool,
        interval_s: float = 1.0,
        shard: tuple[int, str] | None = None,
        event_interval_s: float | None = None,
    ) -> None:
        self.job_id = job_id
        self.stages = stages
        self.shard = shard  # (index, claim): beat that shard's heartbeat too
        self.interval_s = interval_s
        self.event_interval_s = (
            get_settings().progress_event_interval_s
            if event_interval_s is None
            else event_interval_s
        )
        self._stage: str | None = None
        self._stage_started = 0.0
        self._last = 0.0
        self._last_event = 0.0
        self._scored = 0
        self._tick: tuple[str, int, int] | None = None
        self._units = OneUnit()
        self._rate = Rate()

    def progress(self, stage: str, done: int, total: int, metrics: Metrics | None = None) -> None:
        if (stage, done, total) == self._tick and not metrics:
            return  # the engine repeats a stage's last tick at its boundaries
        self._tick = (stage, done, total)
        now = time.monotonic()
        done, total = self._units(stage, done, total)
        rate, eta = self._rate.observe(stage, done, total, now, phase=self._units.phase)
        changed = stage != self._stage
        if changed:
            self._enter(stage, now)
        if stage == "scoring" and done > self._scored:
            SAMPLES_SCORED.inc(done - self._scored)
            self._scored = done
        finished = done >= total
        if changed or finished or now - self._last_event >= self.event_interval_s:
            self._last_event = now
            self._progress_event(stage, done, total, rate, eta, metrics)
        if not (changed or finished or now - self._last >= self.interval_s):
            return
        self._last = now
        with session_scope() as session:
            if self.stages and stage in _STAGES:
                if changed:
                    state.set_stage(session, self.job_id, _STAGES[stage], total=total)
                state.report_progress(session, self.job_id, done, total)
            elif self.shard is not None:
                state.beat_shard(session, self.job_id, *self.shard)
            else:
                state.heartbeat(session, self.job_id)
        self._gpu_memory()

    def close(self) -> None:
        """The last stage ended: observe its duration."""
        if self._stage is not None:
            observe_stage(self._stage, time.monotonic() - self._stage_started)
            self._stage = None

    def _enter(self, stage: str, now: float) -> None:
        if self._stage is not None:
            observe_stage(self._stage, now - self._stage_started)
        self._stage, self._stage_started = stage, now
        bind_values(stage=stage)

    def _progress_event(
        self,
        stage: str,
        done: int,
        total: int,
        rate: float | None,
        eta: float | None,
        metrics: Metrics | None,
    ) -> None:
        unit = STAGE_UNITS.get(stage, "steps")
        data: dict[str, Any] = {
            "done": done,
            "total": total,
            "unit": unit,
            "rate_per_s": _round(rate),
            "eta_s": _round(eta),
        }
        if self.shard is not None:
            data["shard"] = self.shard[0]
        if metrics:
            # JSON has no NaN (Postgres refuses it): a non-finite value is recorded as null.
            data["metrics"] = {
                k: float(v) if math.isfinite(v) else None for k, v in metrics.items()
            }
        message = f"{stage} {done}/{total} {unit}"
        if eta is not None:
            message += f", about {eta:.0f} s left"
        log.info(message, extra={"progress": data})
        with session_scope() as session:
            job = repo.get_job_any_tenant(session, self.job_id)
            if job is not None and not job.status.is_terminal():
                repo.add_event(session, self.job_id, "progress", message, stage=stage, data=data)

    def _gpu_memory(self) -> None:
        import torch

        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return
        device = torch.cuda.current_device()
        name = f"cuda:{device}"
        GPU_MEMORY.labels(name, "allocated").set(torch.cuda.memory_allocated(device))
        GPU_MEMORY.labels(name, "reserved").set(torch.cuda.memory_reserved(device))
        GPU_MEMORY.labels(name, "max_allocated").set(torch.cuda.max_memory_allocated(device))

    def event(self, message: str, data: dict[str, Any]) -> None:
        """An engine event (a batch halved to fit memory, say) as a line in the job's events."""
        log.info(message, extra={"event": data})
        with session_scope() as session:
            job = repo.get_job_any_tenant(session, self.job_id)
            if job is not None and not job.status.is_terminal():
                state.metric(session, self.job_id, message, data)

    def should_stop(self) -> bool:
        with session_scope() as session:
            job = repo.get_job_any_tenant(session, self.job_id)
            return job is None or job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED)
