"""Job state transitions. Each locks the job row, checks the move is legal, writes an event.

The API uses :func:`request_cancel`; the worker uses the rest, and the reconciler
(service/jobs/recovery.py) :func:`recover`. A transition that no longer
applies (the job was cancelled meanwhile, or a redelivered task finds it finished) returns
None or False instead of raising, so that tasks stay idempotent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from service.errors import Conflict
from service.jobs import repository as repo
from service.models import Job, JobStage, JobStatus, ShardStatus
from service.models.base import utcnow
from service.queue import TASK_RANK_JOB, TASK_RUN_JOB, TASK_SCORE_SHARD
from service.webhooks.service import announce_on_commit


class JobGone(LookupError):
    """The job row does not exist (deleted, or a message for another database)."""


def _lock(session: Session, job_id: str) -> Job:
    job = repo.lock_job(session, job_id)
    if job is None:
        raise JobGone(job_id)
    return job


def _finish(session: Session, job: Job, status: JobStatus, message: str, **data: Any) -> None:
    job.status = status
    job.finished_at = utcnow()
    repo.touch(job)
    repo.add_event(session, job.id, "status", message, stage=job.stage, data=data or None)
    announce_on_commit(session, job.id, job.request, status.value)  # its webhook, if asked


def start(session: Session, job_id: str) -> Job | None:
    """queued -> running. Returns the job to work on, or None when there is nothing to do
    (finished already, or cancelled before a worker got to it)."""
    job = _lock(session, job_id)
    if job.status.is_terminal():
        return None
    if job.status is JobStatus.CANCELLING:
        _finish(session, job, JobStatus.CANCELLED, "cancelled before work started")
        return None
    if job.status is JobStatus.QUEUED:
        job.status = JobStatus.RUNNING
        job.started_at = utcnow()
        repo.add_event(session, job.id, "status", "running")
    repo.touch(job)
    return job


def set_stage(session: Session, job_id: str, stage: JobStage, total: int | None = None) -> bool:
    """Enter ``stage`` (progress restarts when ``total`` is given). False if the job stopped."""
    job = _lock(session, job_id)
    if job.status is not JobStatus.RUNNING:
        return False
    if job.stage is not stage:
        job.stage = stage
        repo.add_event(session, job.id, "stage", stage.value, stage=stage.value)
    if total is not None:
        job.progress_done, job.progress_total = 0, total
    repo.touch(job)
    return True


def report_progress(session: Session, job_id: str, done: int, total: int) -> JobStatus:
    """Record progress (a heartbeat too); returns the status so the caller can stop early."""
    job = _lock(session, job_id)
    if not job.status.is_terminal():
        job.progress_done, job.progress_total = done, total
        repo.touch(job)
    return job.status


def record_scores(session: Session, job_id: str, rows: list[tuple[int, str, float]]) -> JobStatus:
    """Upsert a batch of scores and set progress to the number scored; returns the status.

    The job row is locked before the insert: the insert's foreign-key check takes a share lock
    on it, and two shards each holding that share lock while asking for the row lock deadlock.
    """
    job = _lock(session, job_id)
    if job.status.is_terminal():
        return job.status
    repo.upsert_scores(session, job_id, rows)
    job.progress_done = repo.count_scores(session, job_id)
    repo.touch(job)
    return job.status


def heartbeat(session: Session, job_id: str) -> None:
    """The worker is alive on an unfinished job (no progress to report): its row is touched."""
    job = repo.lock_job(session, job_id)
    if job is not None and not job.status.is_terminal():
        repo.touch(job)


def attach_proxy(session: Session, job_id: str, proxy_id: str) -> None:
    """The proxy a job built (or rebuilt after a redelivery) becomes the one its shards use."""
    job = repo.lock_job(session, job_id)
    if job is not None:
        job.proxy_id = proxy_id


def plan_shards(
    session: Session, job_id: str, bounds: list[tuple[int, int]], pool_size: int
) -> list[int]:
    """Record a running job's shards ``[start, stop)`` over a pool of ``pool_size`` records
    (existing ones are kept: a redelivered plan) and return the indices to send now: pending
    shards nobody has claimed, marked queued. Nothing to send once the job stopped running."""
    repo.create_shards(session, job_id, bounds)
    job = repo.lock_job(session, job_id)
    if job is None or job.status is not JobStatus.RUNNING:
        return []
    job.shards_total = len(bounds)
    job.progress_total = pool_size
    job.progress_done = repo.count_scores(session, job_id)
    metric(session, job_id, "pool planned", {"pool_size": pool_size, "shards": len(bounds)})
    pending = []
    for shard in repo.shards_of(session, job_id):
        if shard.status is ShardStatus.PENDING and shard.claim is None:
            shard.queued_at = utcnow()
            pending.append(shard.shard_index)
    return pending


def settle_shard(
    session: Session, job_id: str, index: int, outcome: ShardStatus, claim: str
) -> bool:
    """Record shard ``index``'s end (DONE or STOPPED); True when it was the last to settle and
    the caller must send the ranking. The job row is locked first, so two shards finishing
    together cannot both see 'none pending'. A delivery whose claim was taken over settles
    nothing (the new claimant will). When the last shard settles on a job being cancelled, or
    any shard stopped, the job ends cancelled with what was scored."""
    job = repo.lock_job(session, job_id)
    shard = repo.get_shard(session, job_id, index)
    if job is None or shard is None or job.status.is_terminal():
        return False
    if shard.status is ShardStatus.PENDING:
        if outcome is ShardStatus.DONE and shard.claim != claim:
            return False
        shard.status = outcome
        session.flush()
    if repo.shards_pending(session, job_id):
        return False
    stopped = any(sh.status is ShardStatus.STOPPED for sh in repo.shards_of(session, job_id))
    if job.status is JobStatus.CANCELLING or stopped:
        scored = repo.count_scores(session, job_id)
        cancelled(session, job_id, {"pool_size": job.progress_total, "scored": scored})
        return False
    return True


def metric(session: Session, job_id: str, message: str, data: dict[str, Any]) -> None:
    job = _lock(session, job_id)
    repo.add_event(session, job.id, "metric", message, stage=job.stage, data=data)


def request_cancel(session: Session, job: Job) -> Job:
    """API side: a queued job is cancelled at once; a running one is asked to stop."""
    locked = _lock(session, job.id)
    if locked.status.is_terminal():
        raise Conflict(f"job {job.id} already {locked.status.value}")
    if locked.status is JobStatus.QUEUED:
        _finish(session, locked, JobStatus.CANCELLED, "cancelled while queued")
    elif locked.status is JobStatus.RUNNING:
        locked.status = JobStatus.CANCELLING
        repo.touch(locked)
        repo.add_event(session, locked.id, "status", "cancelling")
    return locked


def succeed(session: Session, job_id: str, result: dict[str, Any]) -> bool:
    job = _lock(session, job_id)
    if job.status.is_terminal():
        return False
    if job.status is JobStatus.CANCELLING:
        # The work finished before the stop request was seen: honour the request, keep the result.
        job.result, job.partial = result, False
        _finish(session, job, JobStatus.CANCELLED, "cancelled (work had already finished)")
        return False
    job.result = result
    job.progress_done = max(job.progress_done, job.progress_total)
    _finish(session, job, JobStatus.SUCCEEDED, "succeeded")
    return True


def cancelled(session: Session, job_id: str, result: dict[str, Any]) -> None:
    """The worker stopped at a batch boundary; what it scored stays, flagged partial."""
    job = _lock(session, job_id)
    if job.status.is_terminal():
        return
    job.result, job.partial = result, True
    _finish(session, job, JobStatus.CANCELLED, "cancelled; partial scores kept", **result)


def fail(session: Session, job_id: str, code: str, message: str) -> None:
    job = _lock(session, job_id)
    if job.status.is_terminal():
        return
    job.error_code, job.error_message = code, message[:4000]
    _finish(session, job, JobStatus.FAILED, f"failed: {code}", code=code)


def claim_shard(
    session: Session, job_id: str, index: int, claim: str, stale_before: datetime
) -> ShardStatus | None:
    """A delivery of shard ``index`` takes it. Returns PENDING when the caller now holds the
    shard (``claim`` recorded, heartbeat beaten) and must score it; DONE or STOPPED when the
    caller must only settle it that way and re-check the barrier (it settled already, or the
    job is being cancelled); None when there is nothing to do: the job ended, or another
    delivery holds the shard with a fresh heartbeat (two writers must not share its gradient
    store). A claim whose heartbeat went stale is taken over and counted as an attempt."""
    job = repo.lock_job(session, job_id)
    shard = repo.get_shard(session, job_id, index)
    if job is None or shard is None or job.status.is_terminal():
        return None
    if shard.status is not ShardStatus.PENDING:
        return shard.status
    if job.status is JobStatus.CANCELLING:
        return ShardStatus.STOPPED
    if shard.claim is not None and shard.claim != claim:
        if shard.heartbeat_at is not None and shard.heartbeat_at >= stale_before:
            return None
        shard.attempts += 1
    now = utcnow()
    shard.claim, shard.started_at, shard.heartbeat_at = claim, now, now
    repo.touch(job)
    return ShardStatus.PENDING


def beat_shard(session: Session, job_id: str, index: int, claim: str) -> bool:
    """The claimant's heartbeat (every batch). False when its claim was taken over: the
    reconciler gave the shard to another delivery, and this one must stop."""
    job = repo.lock_job(session, job_id)
    shard = repo.get_shard(session, job_id, index)
    if job is None or shard is None or shard.claim != claim:
        return False
    shard.heartbeat_at = utcnow()
    if not job.status.is_terminal():
        repo.touch(job)
    return True


Requeue = tuple[str, tuple[Any, ...]]
"""A message to send again: (task name, args)."""


def _retry_job_step(
    session: Session, job: Job, task: str, max_retries: int, what: str
) -> list[Requeue]:
    """The job's own step (planning or ranking) lost its worker: send it again, or fail the
    job once the retry budget is spent."""
    if job.attempts >= max_retries:
        fail(
            session,
            job.id,
            "retries_exhausted",
            f"{what} stopped responding {job.attempts + 1} times",
        )
        return []
    job.attempts += 1
    repo.touch(job)
    repo.add_event(
        session,
        job.id,
        "recovery",
        f"{what} re-queued",
        stage=job.stage,
        data={"attempt": job.attempts},
    )
    return [(task, (job.id,))]


def recover(
    session: Session, job_id: str, stale_before: datetime, max_retries: int
) -> list[Requeue]:
    """The reconciler's look at one unfinished job, under its row lock: what to send again.

    - queued, untouched since ``stale_before``: its run message may be lost; send it again.
    - planning (no shards yet) or ranking, no heartbeat since then: the step's worker died;
      send the step again (counted against ``max_retries``).
    - a claimed shard with a stale heartbeat: its worker died; release the claim and send the
      shard again (counted); an unclaimed shard queued before then: its message may be lost;
      send it again (not counted: it may only be waiting behind other work).
    - every shard settled but no ranking under way: send the ranking.
    - a cancelling job whose remaining work has nobody on it: stop it, keeping what was scored.
    Sending twice is harmless: every step finds its work done, or claimed by a live delivery.
    """
    job = repo.lock_job(session, job_id)
    if job is None or job.status.is_terminal():
        return []
    stale = job.updated_at < stale_before
    cancelling = job.status is JobStatus.CANCELLING
    if job.status is JobStatus.QUEUED:
        if not stale:
            return []
        repo.touch(job)
        repo.add_event(session, job.id, "recovery", "run message sent again")
        return [(TASK_RUN_JOB, (job.id,))]
    shards = repo.shards_of(session, job_id)
    planning = not shards or job.stage not in (JobStage.SCORING, JobStage.RANKING)
    if planning or job.stage is JobStage.RANKING:
        if not stale:
            return []
        if cancelling:
            cancelled(session, job_id, {"scored": repo.count_scores(session, job_id)})
            return []
        task, what = (TASK_RUN_JOB, "planning") if planning else (TASK_RANK_JOB, "ranking")
        return _retry_job_step(session, job, task, max_retries, what)
    out: list[Requeue] = []
    now = utcnow()
    for shard in shards:
        if shard.status is not ShardStatus.PENDING:
            continue
        beat = shard.heartbeat_at or shard.started_at
        lost_worker = shard.claim is not None and (beat is None or beat < stale_before)
        lost_message = shard.claim is None and (
            shard.queued_at is None or shard.queued_at < stale_before
        )
        if not (lost_worker or lost_message):
            continue
        if cancelling:
            shard.status = ShardStatus.STOPPED  # nobody is left to stop it at a batch
            continue
        if lost_worker:
            if shard.attempts >= max_retries:
                fail(
                    session,
                    job_id,
                    "retries_exhausted",
                    f"shard {shard.shard_index} lost its worker {shard.attempts + 1} times",
                )
                return []
            shard.attempts += 1
            shard.claim, shard.heartbeat_at = None, None
            repo.add_event(
                session,
                job_id,
                "recovery",
                f"shard {shard.shard_index} re-queued (its worker stopped responding)",
                stage=job.stage,
                data={"shard": shard.shard_index, "attempt": shard.attempts},
            )
        shard.queued_at = now
        out.append((TASK_SCORE_SHARD, (job_id, shard.shard_index)))
    session.flush()
    if repo.shards_pending(session, job_id) or not stale:
        return out
    # Every shard settled, yet nothing ranked since: the last shard's message to rank was
    # lost, or its worker died between settling and sending it.
    stopped = any(sh.status is ShardStatus.STOPPED for sh in shards)
    if cancelling or stopped:
        scored = repo.count_scores(session, job_id)
        cancelled(session, job_id, {"pool_size": job.progress_total, "scored": scored})
        return out
    repo.touch(job)
    repo.add_event(session, job_id, "recovery", "ranking sent again", stage=job.stage)
    return [*out, (TASK_RANK_JOB, (job_id,))]
