"""The integration tier: a real Celery worker process consuming from a real Redis, writing to a
fresh Postgres database migrated by Alembic; the API runs in-process against the same ones. The
artifact root is a file:// URL, so artifacts cross from the worker to the API through fsspec
(the embedded-default test covers a folder root)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.service.kit import (
    REDIS_DB_INTEGRATION,
    drop_queue,
    fresh_postgres,
    redis_url,
    require_redis,
    reset_caches,
    service_env,
    service_environ,
)
from tests.tiny import save_tiny_model

ROOT = Path(__file__).resolve().parents[2]


WORKER_ONLY_ENV = {"IPROX_ALLOWED_HOSTS": "127.0.0.1", "IPROX_WEBHOOK_BACKOFF_S": "0.5"}


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]
    data: Path
    model: Path
    worker_log: Path
    artifacts: Path  # what the file:// artifact root points at
    work: Path  # the worker's local folder


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited early:\n{log.read_text(errors='replace')}")
        time.sleep(0.5)
    raise TimeoutError(f"no {text!r} in {log} after {timeout}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Stop a process this test started (its own process group: the worker's children too)."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_redis()
    base = tmp_path_factory.mktemp("iprox-integration")
    home, data, models = base / "home", base / "data", base / "models"
    for p in (home, data, models):
        p.mkdir()
    model = save_tiny_model(models / "tiny-llama", "llama")
    with fresh_postgres() as url:
        env = service_env(url, redis_url(REDIS_DB_INTEGRATION), home, data, models) | {
            "IPROX_ARTIFACT_ROOT": (base / "artifacts").as_uri(),
            "IPROX_WORK_DIR": str(base / "work"),
            "IPROX_SHARD_SIZE": "4",  # the 6-record pool splits into two shards
            "IPROX_TASK_SOFT_TIME_LIMIT_S": "300",
            "IPROX_TASK_TIME_LIMIT_S": "330",
        }
        with service_environ(env):
            log = base / "worker.log"
            cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker"]
            cmd += ["-Q", env["IPROX_QUEUE"], "--concurrency", "2"]
            cmd += ["--without-gossip", "--without-mingle"]
            cmd += ["--loglevel", "INFO", "--logfile", str(log)]
            # The worker may reach the tests' webhook receivers on 127.0.0.1 and retries them
            # fast (the API side allows them per test: tests/integration/test_webhooks_worker.py).
            child_env = os.environ | {"PYTHONPATH": str(ROOT)} | WORKER_ONLY_ENV
            proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env, start_new_session=True)
            try:
                _wait_for(log, "ready.", proc, timeout=120)
                yield Stack(
                    env=env,
                    data=data,
                    model=model,
                    worker_log=log,
                    artifacts=base / "artifacts",
                    work=base / "work",
                )
            finally:
                stop(proc)
        drop_queue(REDIS_DB_INTEGRATION, env["IPROX_QUEUE"])


@pytest.fixture
def api(stack: Stack) -> Iterator[TestClient]:
    os.environ.update(stack.env)
    reset_caches()
    from service.main import create_app

    with TestClient(create_app()) as client:
        yield client
