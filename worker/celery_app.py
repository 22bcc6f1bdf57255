"""The Celery application of the worker: the shared configuration (service/queue.py: queues,
acks_late, prefetch 1, time limits) plus the task modules.

Run with ``celery -A worker.celery_app worker -Q iprox``; ``iprox serve`` starts one for the
embedded default.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.signals import worker_ready
from pydantic import ValidationError

from service.config import get_settings
from service.queue import make_celery

try:
    _settings = get_settings()
except ValidationError as exc:  # e.g. an artifact URL whose fsspec back end is not installed
    raise SystemExit(f"iprox worker: invalid configuration: {exc}") from None
app = make_celery(_settings)
app.conf.include = ["worker.tasks.jobs"]


@worker_ready.connect
def _reap_orphans(**_: Any) -> None:
    """Jobs whose heartbeat stopped lost their worker (killed before it could record anything):
    fail them rather than leave them running. ``run_job`` does the same for each new job."""
    from worker.tasks.steps import reap_orphans

    reap_orphans(timedelta(seconds=get_settings().orphan_after_s))
