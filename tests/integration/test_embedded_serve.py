"""The embedded default: ``iprox serve`` (what ``make serve`` runs) starts on a fresh home folder
with no external servers (SQLite, a filesystem broker, its own worker) and runs a job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ROOT, stop
from tests.integration.helpers import check_subset, jsonl, wait_terminal
from tests.tiny import save_tiny_model
from tests.worker.conftest import FAST_PROXY, FAST_SCORER, POOL, TARGET

pytestmark = pytest.mark.integration
KEY = "iprox_embedded-test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, Path, Path]]:
    home, data, cwd = tmp_path / "home", tmp_path / "data", tmp_path / "cwd"
    data.mkdir()
    cwd.mkdir()
    model = save_tiny_model(tmp_path / "models" / "tiny", "llama")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPROX_")}
    env |= {
        "IPROX_HOME": str(home),
        "IPROX_API_KEY": KEY,
        "IPROX_DATA_ROOTS": str(data),
        "IPROX_MODEL_ROOTS": str(model.parent),
        "PYTHONPATH": str(ROOT),
    }
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "serve", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iprox serve did not come up:\n{log.read_text()}")
            time.sleep(0.5)
        yield client, data, model
    finally:
        client.close()
        stop(proc)
        print(log.read_text()[-4000:])
    # Everything the embedded default writes lives under IPROX_HOME, nothing in the cwd.
    assert list(cwd.iterdir()) == []
    # Stopping iprox serve stops its worker, pool children included.
    deadline = time.monotonic() + 10
    while (left := processes_with_home(home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], f"processes outlived iprox serve: {left}"


def processes_with_home(home: Path) -> list[int]:
    """Pids of live processes whose environment has IPROX_HOME=home (Linux /proc)."""
    needle = f"IPROX_HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if needle in env and state != "Z":
            pids.append(int(entry.name))
    return pids


def test_serve_runs_a_select_job(served: tuple[httpx.Client, Path, Path]) -> None:
    client, data, model = served
    (data / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in POOL))
    (data / "target.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TARGET))
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {
        "kind": "select",
        "dataset_uri": (data / "pool.jsonl").as_uri(),
        "target_uri": (data / "target.jsonl").as_uri(),
        "target_model": model.name,  # a folder name under the model root
        "proxy": FAST_PROXY,
        "scorer": FAST_SCORER,
        "selection": {"fraction": 0.5},
    }
    r = client.post("/jobs", json=body, headers=auth)
    assert r.status_code == 202, r.text
    job = wait_terminal(client, r.json()["id"], auth, timeout=300)
    assert job["status"] == "succeeded", job["error"]
    scores = client.get(f"/jobs/{job['id']}/scores", headers=auth).json()
    by_index = {s["index"]: s["score"] for s in scores["items"]}
    subset = jsonl(client.get(f"/jobs/{job['id']}/subset", headers=auth).text)
    check_subset(subset, by_index, POOL, 3)
    # The worker answers the readiness ping with its device and queue.
    ready = client.get("/readyz", params={"min_workers": 1}).json()
    [worker] = ready["workers"]
    assert worker["device"] == "cpu" and worker["queues"] == ["iprox"], ready
    # Its metrics reach the API's /metrics through the shared multiprocess folder.
    text = client.get("/metrics").text
    assert "\niprox_samples_scored_total 6.0\n" in text, text[-3000:]
    assert 'iprox_stage_duration_seconds_count{stage="scoring"}' in text
    assert 'iprox_jobs{status="succeeded"} 1.0' in text


def test_serve_logs_json_lines_naming_the_job(
    served: tuple[httpx.Client, Path, Path], tmp_path: Path
) -> None:
    client, data, model = served
    (data / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in POOL))
    (data / "target.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TARGET))
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {
        "kind": "select",
        "dataset_uri": (data / "pool.jsonl").as_uri(),
        "target_uri": (data / "target.jsonl").as_uri(),
        "target_model": model.name,
        "proxy": FAST_PROXY,
        "scorer": FAST_SCORER,
        "selection": {"top_k": 2},
    }
    job_id = client.post("/jobs", json=body, headers=auth).json()["id"]
    assert wait_terminal(client, job_id, auth, timeout=300)["status"] == "succeeded"
    time.sleep(1)  # the worker's last records reach the log file
    records = []
    for line in (tmp_path / "serve.log").read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    mine = [r for r in records if r.get("job_id") == job_id]
    # The API's access records and the worker's progress records both name the job.
    assert any(r["logger"] == "iprox.access" and r["tenant"] for r in mine)
    progress = [r for r in mine if r["logger"] == "worker.tasks.reporting"]
    assert {r["stage"] for r in progress} >= {"loading", "compressing", "scoring"}
    assert any(r["shard"] == 0 for r in progress) and all(r["tenant"] for r in progress)
    # No progress bar reached the log.
    assert "it/s]" not in (tmp_path / "serve.log").read_text()
