"""Structured logs for the API and the workers: one JSON object a line (python-json-logger), or
plain text with ``IPROX_LOG_FORMAT=text``.

Every record carries the context it was logged in: ``job_id``, ``tenant``, ``stage`` and
``shard`` (null where they do not apply). The API binds the tenant and the job of each request;
a worker task binds its job and shard, and the progress reporter the stage it is in. Context
lives in contextvars, so threads and tasks never see each other's.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTEXT_FIELDS = ("job_id", "tenant", "stage", "shard")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "iprox_log_context", default=None
)

log = logging.getLogger("iprox.access")


def current() -> dict[str, Any]:
    """The context bound now (a copy)."""
    return dict(_context.get() or {})


def bind_values(**values: Any) -> None:
    """Add ``values`` to the context of everything logged from here on in this context."""
    _context.set({**(_context.get() or {}), **values})


@contextmanager
def bind(**values: Any) -> Iterator[None]:
    """Add ``values`` to the log context inside the block."""
    token = _context.set({**(_context.get() or {}), **values})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts the bound context on each record (every field, null when unbound)."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get() or {}
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, bound.get(name))
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tags = " ".join(
            f"{n}={getattr(record, n)}"
            for n in CONTEXT_FIELDS
            if getattr(record, n, None) is not None
        )
        return f"{line} [{tags}]" if tags else line


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``IPROX_LOG_FORMAT`` (json or text)."""
    if fmt == "text":
        return _TextFormatter("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s "
        + " ".join(f"%({n})s" for n in CONTEXT_FIELDS),
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


_HANDLER_NAME = "iprox"


def configure_logging(fmt: str = "json", level: str = "INFO", logfile: str | None = None) -> None:
    """One handler on the root logger writing ``fmt`` lines to stderr, or to ``logfile``
    (Celery's ``--logfile``), idempotent: a second call replaces the first's. uvicorn's and
    Celery's loggers propagate to it."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == _HANDLER_NAME:
            root.removeHandler(h)
            h.close()
    handler: logging.Handler = (
        logging.FileHandler(logfile, encoding="utf-8")
        if logfile
        else logging.StreamHandler(sys.stderr)
    )
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        lg = logging.getLogger(name)
        lg.handlers = [h for h in lg.handlers if h.get_name() == _HANDLER_NAME]
        lg.propagate = True
    # uvicorn's access lines are replaced by RequestContext's, which carry the context.
    logging.getLogger("uvicorn.access").disabled = True


class RequestContext:
    """Pure ASGI middleware: a fresh log context per request, then one access record with the
    method, route, status, duration and the request's tenant and job."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _context.set({})
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
            job_id = (scope.get("path_params") or {}).get("job_id")
            if job_id is not None and "job_id" not in (_context.get() or {}):
                bind_values(job_id=job_id)
            log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                },
            )
            _context.reset(token)
