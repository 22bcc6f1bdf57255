"""Prometheus metrics of the API and the workers (prometheus-client).

The API observes request latency by route template and status, and reads job counts by status
from the database at each scrape. Workers observe stage durations, samples scored and, on CUDA,
device memory. Both kinds reach ``GET /metrics`` of the API when the processes share a
``PROMETHEUS_MULTIPROC_DIR`` (``iprox serve`` sets one under ``IPROX_HOME``; prometheus-client's
multiprocess mode), or a worker serves its own on ``IPROX_WORKER_METRICS_PORT``.

The worker's metric objects live here too, so both sides name them once; the API never imports
torch, so GPU memory is set by the worker (``worker/tasks/reporting.py``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Request latencies from a millisecond (a cached GET) to a minute (a slow remote HEAD check).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Stages last from a second (ranking) to hours (scoring a large pool).
_STAGE_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)

REQUEST_SECONDS = Histogram(
    "iprox_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template, method and status.",
    ("route", "method", "status"),
    buckets=_LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "iprox_stage_duration_seconds",
    "Wall time of one job stage in one worker task (loading, compressing, aligning, scoring, "
    "ranking).",
    ("stage",),
    buckets=_STAGE_BUCKETS,
)
SAMPLES_SCORED = Counter("iprox_samples_scored", "Pool samples scored by the workers.")
GPU_MEMORY = Gauge(
    "iprox_gpu_memory_bytes",
    "CUDA memory of a worker process: allocated, reserved, and the peak allocated.",
    ("device", "kind"),
    multiprocess_mode="livemax",
)


def multiprocess() -> bool:
    """Whether prometheus-client writes and reads this process's metrics through files."""
    return bool(os.environ.get(MULTIPROC_ENV))


class JobsCollector(Collector):
    """``iprox_jobs{status}``: jobs in the database by status, read at scrape time (every
    tenant; the database is the only place that knows)."""

    def collect(self) -> Iterable[Any]:
        from sqlalchemy import func, select

        from service.db import read_connection
        from service.models import Job, JobStatus

        family = GaugeMetricFamily("iprox_jobs", "Jobs by status.", labels=("status",))
        try:
            with read_connection() as conn:
                rows = conn.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            counts = {status: n for status, n in rows}
        except Exception as exc:  # a scrape during an outage still answers the process metrics
            log.warning("iprox_jobs left out of this scrape: %s", exc)
            return iter(())
        for status in JobStatus:
            family.add_metric((status.value,), counts.get(status, 0))
        return iter((family,))


_JOBS = JobsCollector()
_registered = False


def render() -> tuple[bytes, str]:
    """The text exposition of every metric this deployment shares with this process."""
    global _registered
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(_JOBS)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    if not _registered:
        REGISTRY.register(_JOBS)
        _registered = True
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_registry() -> CollectorRegistry:
    """What a worker's own metrics port serves: the multiprocess files of its pool processes
    when there are some, else this process's metrics."""
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    # An unmatched path is one label, not one per URL a scanner tries.
    return str(path) if path else "unmatched"


class RequestMetrics:
    """Pure ASGI middleware timing each HTTP request by route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            REQUEST_SECONDS.labels(_route_template(scope), scope["method"], str(status)).observe(
                time.perf_counter() - start
            )


def clear_multiprocess_dir(folder: str) -> Iterator[str]:
    """Remove the metric files a previous run left in ``folder`` (at start, before any process
    writes); yields the names removed."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.endswith(".db"):
            os.remove(os.path.join(folder, name))
            yield name
