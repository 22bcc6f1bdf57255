"""Celery tasks: thin wrappers that take a job id and run one step under the failure guard."""

from __future__ import annotations

from datetime import timedelta

from service.config import get_settings
from service.queue import TASK_RANK_JOB, TASK_RUN_JOB, TASK_SCORE_SHARD
from worker.celery_app import app
from worker.tasks import steps


def _send(task_name: str, *args: object) -> None:
    app.send_task(task_name, args=list(args))


@app.task(name=TASK_RUN_JOB)
def run_job(job_id: str) -> None:
    settings = get_settings()
    steps.reap_orphans(timedelta(seconds=settings.orphan_after_s))
    with steps.job_guard(job_id):
        steps.run_job(job_id, get_settings(), _send)


@app.task(name=TASK_SCORE_SHARD)
def score_shard(job_id: str, shard_index: int) -> None:
    with steps.job_guard(job_id):
        steps.score_shard(job_id, shard_index, get_settings(), _send)


@app.task(name=TASK_RANK_JOB)
def rank_job(job_id: str) -> None:
    with steps.job_guard(job_id):
        steps.rank_job(job_id, get_settings())
