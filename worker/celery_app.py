"""The Celery application of the worker: the shared configuration (service/queue.py: queues,
acks_late, prefetch 1, time limits) plus the task modules.

Run with ``celery -A worker.celery_app worker -Q iprox``; ``iprox serve`` starts one for the
embedded default. ``IPROX_DEVICE`` / ``IPROX_DTYPE`` are resolved here, at start-up: a worker
asked for a device that is not there exits with a message instead of failing its first job.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
log = logging.getLogger(__name__)
with contextlib.suppress(OSError):  # where beat keeps its schedule (a worker's -B, or beat)
    _settings.home.mkdir(parents=True, exist_ok=True)


@worker_ready.connect
def _reconcile_at_start(**_: Any) -> None:
    """A worker that starts may replace one that died: look for stranded work at once rather
    than at the next beat."""
    from worker.tasks.jobs import reconcile

    try:
        reconcile()
    except Exception:  # never keep a worker from starting
        log.exception("reconciler: the start-up pass failed")
