"""Job state transitions. Each locks the job row, checks the move is legal, writes an event.

The API uses :func:`request_cancel`; the worker uses the rest. A transition that no longer
applies (the job was cancelled meanwhile, or a redelivered task finds it finished) returns
None or False instead of raising, so that tasks stay idempotent.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.errors import Conflict
from service.jobs import repository as repo
from service.models import Job, JobStage, JobStatus
from service.models.base import utcnow


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
