"""The Celery application of the worker: the shared configuration (service/queue.py: queues,
acks_late, prefetch 1, time limits) plus the task modules.

Run with ``celery -A worker.celery_app worker -Q iprox``; ``iprox serve`` starts one for the
embedded default.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.signals import worker_ready

from service.config import get_settings
from service.queue import make_celery

app = make_celery(get_settings())
app.conf.include = ["worker.tasks.jobs"]


@worker_ready.connect
def _reap_orphans(**_: Any) -> None:
    """A job whose heartbeat stopped longer ago than the hard time limit lost its worker (the
    process was killed before it could record anything): fail it rather than leave it running."""
    from worker.tasks.steps import reap_orphans

    settings = get_settings()
    reap_orphans(timedelta(seconds=settings.task_time_limit_s + 60))
