"""``iprox serve``: the embedded default. One command, no external servers.

It applies the migrations (a start-up step), makes sure a local API key exists, starts a Celery
worker process beside the API, runs the reconciler on a timer thread (stranded work is
re-queued; production uses Celery beat) and serves the API with uvicorn. With no ``IPROX_*`` settings the
state lives under ``IPROX_HOME`` (default ``~/.iprox``): a SQLite database, a filesystem message
queue and the artifacts. Set ``IPROX_DATABASE_URL``/``IPROX_BROKER_URL`` to serve against
Postgres/Redis instead (then run further workers with ``celery -A worker.celery_app worker``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

LOCAL_TENANT = "local"


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the API and a worker (embedded default)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--concurrency", type=int, default=1, help="worker processes for jobs (default 1)"
    )
    p.add_argument("--no-worker", action="store_true", help="serve the API only")
    p.set_defaults(func=run)


def local_key(home: Path, given: str | None) -> tuple[str, bool]:
    """The local API key: ``IPROX_API_KEY``, else the one kept in ``$IPROX_HOME/api_key`` from
    an earlier start, else a new one (saved there, owner-only). Returns (key, newly created)."""
    from service.auth.keys import generate_key

    if given:
        return given, False
    path = home / "api_key"
    if path.is_file():
        return path.read_text(encoding="utf-8").strip(), False
    key = generate_key()
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    return key, True


def _defaults() -> None:
    """Embedded defaults for what is unset; children (the worker) inherit them."""
    home = Path(os.environ.get("IPROX_HOME") or Path.home() / ".iprox").expanduser().resolve()
    os.environ["IPROX_HOME"] = str(home)
    # Local files the user names in file:// URIs: the folder serve was started from.
    os.environ.setdefault("IPROX_DATA_ROOTS", str(Path.cwd().resolve()))
    # The worker's metrics reach the API's /metrics through files both processes share
    # (prometheus-client's multiprocess mode); set before prometheus-client is imported.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(home / "metrics"))


def start_worker(concurrency: int, queue: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        queue,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    # Its own process group, so that stopping it reaches the prefork pool's children too.
    return subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)


def stop_worker(worker: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Warm shutdown of the worker's whole process group, then a kill if it does not finish.

    Killing only the main process would orphan its pool children, which keep running."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(worker.pid, sig)
        except ProcessLookupError:
            return
        try:
            worker.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError):  # no pool child may outlive the main one
            os.killpg(worker.pid, signal.SIGKILL)
        return


_stopping = threading.Event()


def start_reconciler(interval_s: float, stop: threading.Event) -> threading.Thread:
    """Every ``interval_s``, re-queue stranded work (service/jobs/recovery.py). A thread of
    this process rather than a task, so that it runs even while every worker slot is busy."""
    from service.config import get_settings
    from service.jobs.recovery import reconcile
    from service.queue import get_dispatcher

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                reconcile(get_settings(), get_dispatcher().enqueue)
            except Exception as exc:  # an outage: the next pass tries again
                print(f"iprox serve: reconciler pass failed: {exc}", file=sys.stderr, flush=True)

    thread = threading.Thread(target=loop, name="iprox-reconciler", daemon=True)
    thread.start()
    return thread


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: with the default
    # handler that would end the process before ``run``'s ``finally`` stops the worker.
    raise SystemExit(0)


def _watch(worker: subprocess.Popen[bytes]) -> None:
    """Without its worker the service would accept jobs that never run: stop with it."""
    code = worker.wait()
    if _stopping.is_set():  # we are the ones stopping it
        return
    print(f"iprox serve: the worker exited (code {code}); stopping", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)


def run(args: argparse.Namespace) -> int:
    _defaults()
    import uvicorn
    from pydantic import ValidationError

    from service.auth.keys import ensure_key
    from service.config import get_settings
    from service.db import session_scope
    from service.migrate import upgrade

    try:
        settings = get_settings()
    except ValidationError as exc:  # e.g. an artifact URL whose fsspec back end is missing
        print(f"iprox serve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.artifacts.work.mkdir(parents=True, exist_ok=True)
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    Path(metrics_dir).mkdir(parents=True, exist_ok=True)
    from service.metrics import clear_multiprocess_dir

    list(clear_multiprocess_dir(metrics_dir))  # counters start at zero with each serve
    upgrade(settings.resolved_database_url)
    key, created = local_key(settings.home, settings.api_key)
    with session_scope() as session:
        ensure_key(session, LOCAL_TENANT, key)
    print(f"iprox serve: state in {settings.home}", flush=True)
    print(f"iprox serve: file:// URIs allowed under {', '.join(map(str, settings.data_roots))}")
    if created:
        print(f"iprox serve: created the local API key {key} (kept in {settings.home / 'api_key'})")
    else:
        print(
            "iprox serve: local API key from "
            + ("IPROX_API_KEY" if settings.api_key else str(settings.home / "api_key"))
        )
    print(f"iprox serve: API on http://{args.host}:{args.port} (docs at /docs)", flush=True)
    worker = None if args.no_worker else start_worker(args.concurrency, settings.queue)
    if worker is not None:
        threading.Thread(target=_watch, args=(worker,), daemon=True).start()
    start_reconciler(settings.reconcile_interval_s, _stopping)
    try:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        uvicorn.run(
            "service.main:app",
            host=args.host,
            port=args.port,
            log_level="info",
            log_config=None,  # the app's JSON (or IPROX_LOG_FORMAT=text) logging, not uvicorn's
            timeout_graceful_shutdown=10,  # SIGTERM always ends it, in-flight requests or not
        )
    finally:
        if worker is not None:
            _stopping.set()
            stop_worker(worker)
    return 0
