"""The Celery application of the worker: the shared configuration (service/queue.py: queues,
acks_late, prefetch 1, time limits) plus the task modules.

Run with ``celery -A worker.celery_app worker -Q iprox``; ``iprox serve`` starts one for the
embedded default. ``IPROX_DEVICE`` / ``IPROX_DTYPE`` are resolved here, at start-up: a worker
asked for a device that is not there exits with a message instead of failing its first job.
"""

from __future__ import annotations

import os
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

# The CUDA check goes through NVML, which leaves CUDA uninitialised in this (parent) process:
# the prefork pool's child that runs the tasks can then use the GPU.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
try:
    from worker.engine.errors import EngineError
    from worker.tasks.runtime import worker_runtime

    RUNTIME = worker_runtime(_settings)
except EngineError as exc:
    raise SystemExit(f"iprox worker: {exc.message}") from None
app = make_celery(_settings)
app.conf.include = ["worker.tasks.jobs"]


@worker_ready.connect
def _reap_orphans(**_: Any) -> None:
    """Jobs whose heartbeat stopped lost their worker (killed before it could record anything):
    fail them rather than leave them running. ``run_job`` does the same for each new job."""
    from worker.tasks.steps import reap_orphans

    reap_orphans(timedelta(seconds=get_settings().orphan_after_s))
