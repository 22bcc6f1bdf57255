"""Recovery with real processes: Celery workers and beat against Redis and Postgres, the
worker's database reached through a TCP proxy on 127.0.0.1 (tests/tcp_proxy.py) that can be
taken down. A worker killed with SIGKILL mid-scoring, the broker flushed mid-job and the
database gone for 20 s: each job still succeeds, with exactly one score row per sample.

The stale window is 8 s and the reconciler runs every 2 s, so each recovery takes seconds;
the pool is 16 records in shards of 4, scored one sample per batch, on the tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from service.db import session_scope
from service.models import Score
from tests.integration.conftest import ROOT, stop
from tests.integration.helpers import wait_terminal
from tests.service.kit import (
    flush_redis,
    fresh_postgres,
    redis_url,
    require_redis,
    reset_caches,
    service_env,
    service_environ,
)
from tests.service.plugin import new_key
from tests.tcp_proxy import TcpProxy
from tests.tiny import save_tiny_model
from tests.worker.conftest import FAST_PROXY, FAST_SCORER, TARGET

pytestmark = pytest.mark.integration

REDIS_DB_RECOVERY = 15  # its own database: these tests flush it
STALE_S = 8
N = 16
SHARD = 4  # samples per shard, scored one per batch: a shard is in flight for 4 batches
# Workers whose scorer pauses after every batch: each test acts on a job still in progress
# (kills a worker mid-shard, flushes the broker, cuts the database), and a fast machine
# scored the whole pool between two polls of the score count with the plain app.
SLOW_APP = "tests.integration.slow_worker"
POOL = [{"id": f"r{i}", "prompt": f"Add {i} and {i}.", "completion": f"{2 * i}."} for i in range(N)]


@dataclass
class Recovery:
    env: dict[str, str]  # the API's (direct database URL)
    worker_env: dict[str, str]  # the workers' (database through the proxy)
    db_proxy: TcpProxy
    base: Path
    model: Path
    data: Path
    procs: list[subprocess.Popen[bytes]]
    proxy_id: list[str]
    auth: dict[str, str]  # one tenant for the module: the first job's proxy is reused

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        log = self.base / f"{name}.log"
        cmd = [sys.executable, "-m", "celery", "-A", SLOW_APP, "worker"]
        cmd += ["-Q", self.env["IPROX_QUEUE"], "--concurrency", "1", "-n", f"{name}@%h"]
        cmd += ["--without-gossip", "--without-mingle", "--loglevel", "INFO"]
        cmd += ["--logfile", str(log)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.worker_env, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 120
        while not (log.exists() and "ready." in log.read_text(errors="replace")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n{self.logs()}")
            time.sleep(0.3)
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}"
            for p in sorted(self.base.glob("*.log"))
        )


@pytest.fixture(scope="module")
def recovery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recovery]:
    require_redis()
    base = tmp_path_factory.mktemp("iprox-recovery")
    home, data, models = base / "home", base / "data", base / "models"
    for p in (home, data, models):
        p.mkdir()
    model = save_tiny_model(models / "tiny-llama", "llama")
    flush_redis(REDIS_DB_RECOVERY)
    with fresh_postgres() as url:
        db = make_url(url)
        db_proxy = TcpProxy((db.host or "127.0.0.1", db.port or 5432)).start()
        proxied = db.set(host="127.0.0.1", port=db_proxy.port)
        env = service_env(url, redis_url(REDIS_DB_RECOVERY), home, data, models) | {
            "IPROX_QUEUE": f"iprox-recovery-{uuid.uuid4().hex[:6]}",
            "IPROX_SHARD_SIZE": str(SHARD),
            "IPROX_SHARD_STALE_AFTER_S": str(STALE_S),
            "IPROX_RECONCILE_INTERVAL_S": "2",
            "IPROX_TASK_SOFT_TIME_LIMIT_S": "300",
            "IPROX_TASK_TIME_LIMIT_S": "330",
            "IPROX_DB_CONNECT_TIMEOUT_S": "2",
        }
        worker_env = (
            os.environ
            | env
            | {
                "IPROX_DATABASE_URL": proxied.render_as_string(hide_password=False),
                "PYTHONPATH": str(ROOT),
            }
        )
        state = Recovery(env, worker_env, db_proxy, base, model, data, [], [], {})
        with service_environ(env):
            state.auth["Authorization"] = f"Bearer {new_key()}"
            beat_log = base / "beat.log"
            beat = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat"),
                    *("--loglevel", "INFO", "--logfile", str(beat_log)),
                    *("--schedule", str(home / "celerybeat-schedule")),
                ],
                cwd=ROOT,
                env=worker_env,
                start_new_session=True,
            )
            state.procs.append(beat)
            try:
                yield state
            finally:
                for proc in state.procs:
                    stop(proc)
                db_proxy.stop()
        flush_redis(REDIS_DB_RECOVERY)


@pytest.fixture
def api(recovery: Recovery) -> Iterator[TestClient]:
    os.environ.update(recovery.env)
    reset_caches()
    from service.main import create_app

    with TestClient(create_app()) as client:
        yield client


@pytest.fixture
def workers(recovery: Recovery) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Start workers by name; every one of them is stopped after the test."""
    mine: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> subprocess.Popen[bytes]:
        proc = recovery.start_worker(name)
        mine.append(proc)
        return proc

    yield start
    for proc in mine:
        stop(proc)


def _file(recovery: Recovery, rows: list[dict[str, Any]]) -> str:
    path = recovery.data / f"{uuid.uuid4().hex[:8]}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.as_uri()


def _submit(api: TestClient, recovery: Recovery, auth: dict[str, str]) -> str:
    # The first job builds the proxy; later ones reuse it, to keep these tests short.
    proxy = {"proxy_id": recovery.proxy_id[0]} if recovery.proxy_id else FAST_PROXY
    body = {
        "kind": "select",
        "dataset_uri": _file(recovery, POOL),
        "target_uri": _file(recovery, TARGET),
        "target_model": str(recovery.model),
        "proxy": proxy,
        "scorer": dict(FAST_SCORER, batch_size=1),
        "selection": {"top_k": 4},
    }
    r = api.post("/jobs", json=body, headers=auth)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _scores(job_id: str) -> tuple[int, int]:
    """(score rows, distinct sample indices) of a job."""
    with session_scope() as s:
        q = select(func.count(), func.count(func.distinct(Score.sample_index)))
        total, distinct = s.execute(q.where(Score.job_id == job_id)).one()
    return int(total), int(distinct)


def _wait_scores(job_id: str, at_least: int, timeout: float, recovery: Recovery) -> None:
    deadline = time.monotonic() + timeout
    while _scores(job_id)[0] < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {at_least} scores after {timeout}s\n{recovery.logs()}")
        time.sleep(0.2)


def _succeeded(
    api: TestClient, recovery: Recovery, job_id: str, auth: dict[str, str], timeout: float
) -> dict[str, Any]:
    job = wait_terminal(api, job_id, auth, timeout=timeout)
    assert job["status"] == "succeeded", (job["error"], recovery.logs())
    assert _scores(job_id) == (N, N)  # exactly one row per sample
    if not recovery.proxy_id:
        recovery.proxy_id.append(job["result"]["proxy_id"])
    return job


def _recovery_events(api: TestClient, job_id: str, auth: dict[str, str]) -> list[str]:
    events = api.get(f"/jobs/{job_id}/events", headers=auth).json()["items"]
    return [e["message"] for e in events if e["type"] == "recovery"]


def test_worker_killed_mid_scoring(
    api: TestClient, recovery: Recovery, workers: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    auth = recovery.auth
    doomed = workers("doomed")
    job_id = _submit(api, recovery, auth)
    # Kill mid-shard: one worker scores one shard at a time, a batch of one sample at a time,
    # so a count that is not a multiple of the shard size means a shard is half done.
    _wait_scores(job_id, N // 2, timeout=300, recovery=recovery)
    deadline = time.monotonic() + 120
    while _scores(job_id)[0] % SHARD == 0 and _scores(job_id)[0] < N:
        assert time.monotonic() < deadline, recovery.logs()
        time.sleep(0.02)
    assert _scores(job_id)[0] < N, "the job finished before the worker could be killed"
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its pool child, mid-shard
    doomed.wait()
    killed_at = time.monotonic()
    workers("replacement")
    _succeeded(api, recovery, job_id, auth, timeout=STALE_S + 60)
    assert time.monotonic() - killed_at < STALE_S + 60
    assert any("worker stopped responding" in m for m in _recovery_events(api, job_id, auth)), (
        recovery.logs()
    )


def test_broker_flushed_mid_job(
    api: TestClient, recovery: Recovery, workers: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    auth = recovery.auth
    workers("steady")
    job_id = _submit(api, recovery, auth)
    _wait_scores(job_id, 2, timeout=300, recovery=recovery)
    flush_redis(REDIS_DB_RECOVERY)  # every queued shard message is gone
    _succeeded(api, recovery, job_id, auth, timeout=STALE_S + 120)
    log = (recovery.base / "steady.log").read_text(errors="replace")
    assert f"reconciler: sending iprox.score_shard('{job_id}'" in log  # from the database


def test_database_unreachable_for_20_s(
    api: TestClient, recovery: Recovery, workers: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    auth = recovery.auth
    workers("patient")
    job_id = _submit(api, recovery, auth)
    _wait_scores(job_id, 2, timeout=300, recovery=recovery)
    recovery.db_proxy.stop()  # the workers' database is gone; the API's is not
    time.sleep(20)
    assert _scores(job_id)[0] < N  # nothing could be written meanwhile
    recovery.db_proxy.start()
    _succeeded(api, recovery, job_id, auth, timeout=STALE_S + 120)
    log = (recovery.base / "patient.log").read_text(errors="replace")
    assert f"job {job_id}: iprox.score_shard (retry 1)" in log  # retried, not acknowledged
