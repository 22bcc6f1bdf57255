"""Progress and stop callbacks that bind the engine to one job's database row."""

from __future__ import annotations

import time
from typing import Any

from service.db import session_scope
from service.jobs import repository as repo
from service.jobs import state
from service.models import JobStage, JobStatus

# Stages the planning task shows; during shard scoring the engine's own "loading"/"scoring"
# reports only beat the heart, since several shards run at once.
_STAGES = {s.value: s for s in JobStage}


class Reporter:
    """``progress(stage, done, total)`` and ``should_stop()`` for the engine, writing at most
    every ``interval_s`` seconds (stage changes and completions are always written)."""

    def __init__(
        self,
        job_id: str,
        *,
        stages: bool,
        interval_s: float = 1.0,
        shard: tuple[int, str] | None = None,
    ) -> None:
        self.job_id = job_id
        self.stages = stages
        self.shard = shard  # (index, claim): beat that shard's heartbeat too
        self.interval_s = interval_s
        self._stage: str | None = None
        self._last = 0.0

    def progress(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        changed = stage != self._stage
        if not (changed or done >= total or now - self._last >= self.interval_s):
            return
        self._stage, self._last = stage, now
        with session_scope() as session:
            if self.stages and stage in _STAGES:
                if changed:
                    state.set_stage(session, self.job_id, _STAGES[stage], total=total)
                state.report_progress(session, self.job_id, done, total)
            elif self.shard is not None:
                state.beat_shard(session, self.job_id, *self.shard)
            else:
                state.heartbeat(session, self.job_id)

    def event(self, message: str, data: dict[str, Any]) -> None:
        """An engine event (a batch halved to fit memory, say) as a line in the job's events."""
        with session_scope() as session:
            job = repo.get_job_any_tenant(session, self.job_id)
            if job is not None and not job.status.is_terminal():
                state.metric(session, self.job_id, message, data)

    def should_stop(self) -> bool:
        with session_scope() as session:
            job = repo.get_job_any_tenant(session, self.job_id)
            return job is None or job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED)
