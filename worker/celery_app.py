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
import tempfile
from typing import Any

from celery.signals import setup_logging, worker_init, worker_ready
from celery.worker.control import control_command
from pydantic import ValidationError

from service.config import get_settings
from service.logs import configure_logging
from service.queue import CONTROL_WORKER_INFO, make_celery

try:
    _settings = get_settings()
except ValidationError as exc:  # e.g. an artifact URL whose fsspec back end is not installed
    raise SystemExit(f"iprox worker: invalid configuration: {exc}") from None

# Progress goes to job events and structured logs; Hugging Face's tqdm bars would reach the log
# as WARNING lines through Celery's stdout redirection.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# A worker serving its own metrics port collects its pool processes' metrics from files; the
# folder must be known before prometheus-client is first imported (here, or in a pool child).
if _settings.worker_metrics_port is not None and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="iprox-metrics-")
configure_logging(_settings.log_format, _settings.log_level)

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


@setup_logging.connect
def _keep_our_logging(logfile: str | None = None, **_: Any) -> None:
    """Connected, so that Celery leaves the root logger to configure_logging (JSON lines);
    its ``--logfile`` is honoured, its ``--loglevel`` gives way to ``IPROX_LOG_LEVEL``."""
    configure_logging(_settings.log_format, _settings.log_level, logfile=logfile or None)


@control_command()
def iprox_worker_info(state: Any) -> dict[str, Any]:
    """Answer GET /readyz's ping: this worker's device, dtype and queues."""
    consumer = getattr(state, "consumer", None)
    task_consumer = getattr(consumer, "task_consumer", None)
    queues = [q.name for q in getattr(task_consumer, "queues", None) or []]
    return {**RUNTIME.describe(), "queues": queues or [_settings.queue]}


assert iprox_worker_info.__name__ == CONTROL_WORKER_INFO  # the API sends it by this name


@worker_init.connect
def _metrics_port(**_: Any) -> None:
    """``IPROX_WORKER_METRICS_PORT``: serve this worker's metrics (all its pool processes)."""
    if _settings.worker_metrics_port is None:
        return
    from prometheus_client import start_http_server

    from service.metrics import worker_registry

    start_http_server(_settings.worker_metrics_port, registry=worker_registry())
    log.info("worker metrics on port %d", _settings.worker_metrics_port)


@worker_ready.connect
def _reconcile_at_start(**_: Any) -> None:
    """A worker that starts may replace one that died: look for stranded work at once rather
    than at the next beat."""
    from worker.tasks.jobs import reconcile

    try:
        reconcile()
    except Exception:  # never keep a worker from starting
        log.exception("reconciler: the start-up pass failed")
