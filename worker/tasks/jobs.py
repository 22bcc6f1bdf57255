"""Celery tasks: thin wrappers that take a job id and run one step under the failure guard.

A step that hits an outage (steps.is_transient: database or broker unreachable) is retried
with backoff rather than acknowledged as a failure; once IPROX_TRANSIENT_RETRIES are spent the
message is dropped and the reconciler re-queues the work when its heartbeat goes stale.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from celery import Task

from service.config import get_settings
from service.db import session_scope
from service.jobs import repository
from service.jobs.recovery import reconcile as reconcile_once
from service.logs import bind
from service.queue import (
    TASK_DELIVER_WEBHOOK,
    TASK_RANK_JOB,
    TASK_RECONCILE,
    TASK_RUN_JOB,
    TASK_SCORE_SHARD,
)
from service.webhooks import delivery
from worker.celery_app import app
from worker.tasks import steps

log = logging.getLogger(__name__)


def _send(task_name: str, *args: object) -> None:
    app.send_task(task_name, args=list(args))


def backoff_s(retries: int) -> float:
    """1, 2, 4, ... seconds, at most 30, with jitter so that a fleet does not retry at once."""
    return min(2.0**retries, 30.0) * random.uniform(0.8, 1.2)


def _tenant_of(job_id: str) -> str | None:
    """For the log context; a database that cannot say is the step's problem, not the log's."""
    try:
        with session_scope() as s:
            job = repository.get_job_any_tenant(s, job_id)
            return job.tenant_id if job is not None else None
    except Exception:
        return None


def _with_retries(
    task: Task,
    job_id: str,
    step: Callable[[], None],
    shard: int | None = None,
    stage: str | None = None,
) -> None:
    # Every record the step logs names the job, its tenant and shard; the progress reporter
    # adds the stage as the engine enters each.
    with bind(job_id=job_id, shard=shard, tenant=_tenant_of(job_id), stage=stage):
        _run_step(task, job_id, step)


def _run_step(task: Task, job_id: str, step: Callable[[], None]) -> None:
    try:
        with steps.job_guard(job_id):
            step()
    except Exception as exc:
        if not steps.is_transient(exc):
            raise
        retries = task.request.retries
        log.warning("job %s: %s (retry %d): %s", job_id, task.name, retries + 1, exc)
        raise task.retry(
            exc=exc, countdown=backoff_s(retries), max_retries=get_settings().transient_retries
        ) from exc


@app.task(name=TASK_RUN_JOB, bind=True)
def run_job(self: Task, job_id: str) -> None:
    _with_retries(self, job_id, lambda: steps.run_job(job_id, get_settings(), _send))


@app.task(name=TASK_SCORE_SHARD, bind=True)
def score_shard(self: Task, job_id: str, shard_index: int) -> None:
    # The task id names this delivery's claim on the shard; a retry keeps it.
    claim = self.request.id

    def step() -> None:
        steps.score_shard(job_id, shard_index, get_settings(), _send, claim=claim)

    _with_retries(self, job_id, step, shard=shard_index)


@app.task(name=TASK_RANK_JOB, bind=True)
def rank_job(self: Task, job_id: str) -> None:
    _with_retries(self, job_id, lambda: steps.rank_job(job_id, get_settings()), stage="ranking")


@app.task(name=TASK_RECONCILE)
def reconcile(**_: Any) -> int:
    """Sent by Celery beat: re-queue stranded work (service/jobs/recovery.py)."""
    try:
        return len(reconcile_once(get_settings(), _send))
    except Exception as exc:
        if not steps.is_transient(exc):
            raise
        log.warning("reconciler: skipped this pass (%s); the next one will try again", exc)
        return 0


@app.task(name=TASK_DELIVER_WEBHOOK, bind=True)
def deliver_webhook(self: Task, job_id: str, ending: str, msg_id: str, attempt: int = 1) -> None:
    """One attempt of a job's webhook; a failed one sends the next attempt after its backoff
    (service/webhooks/delivery.py). The job itself never waits on this."""
    try:
        retry_in = delivery.deliver(job_id, ending, msg_id, attempt, get_settings())
    except Exception as exc:
        if not steps.is_transient(exc):
            raise
        raise self.retry(
            exc=exc,
            countdown=backoff_s(self.request.retries),
            max_retries=get_settings().transient_retries,
        ) from exc
    if retry_in is not None:
        app.send_task(
            TASK_DELIVER_WEBHOOK, args=[job_id, ending, msg_id, attempt + 1], countdown=retry_in
        )
