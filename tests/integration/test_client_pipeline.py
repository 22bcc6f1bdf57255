"""The ML engineer's pipeline step against the real API (HTTP on 127.0.0.1), a real Celery
worker, Redis and Postgres: the Python client (submit, wait, events, downloads, typed errors)
and the same through ``iprox jobs submit|wait|download`` in a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import iprox_client
import pyarrow.parquet as pq
import pytest
from iprox_client import Client

from tests.integration.conftest import ROOT, Stack
from tests.integration.helpers import check_subset, jsonl
from tests.integration.live import live_api
from tests.service.plugin import new_key
from tests.worker.conftest import FAST_PROXY, FAST_SCORER, POOL, TARGET

pytestmark = pytest.mark.integration


def _file(stack: Stack, rows: list[dict[str, str]]) -> str:
    path = stack.data / f"{uuid.uuid4().hex[:8]}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.as_uri()


def _body(stack: Stack) -> dict[str, object]:
    return {
        "kind": "select",
        "dataset_uri": _file(stack, POOL),
        "target_uri": _file(stack, TARGET),
        "target_model": str(stack.model),
        "proxy": FAST_PROXY,
        "scorer": FAST_SCORER,
        "selection": {"top_k": 3},
    }


def test_the_client_runs_a_pipeline_step(stack: Stack, tmp_path: Path) -> None:
    key = new_key()
    with live_api(stack) as url, Client(url, key) as iprox:
        with pytest.raises(iprox_client.ValidationFailed) as err:
            iprox.submit(_body(stack) | {"selection": {"top_k": 99}})
        assert err.value.field == "selection.top_k"
        with pytest.raises(iprox_client.NotFound):
            iprox.get("no-such-job")

        job = iprox.submit(_body(stack))
        heard: list[str] = []
        done = iprox.wait(job.id, timeout=300, on_progress=lambda j: heard.append(j.status))
        assert done.status == "succeeded", stack.worker_log.read_text()[-3000:]
        assert heard[-1] == "succeeded" and heard[0] in ("queued", "running")
        assert [e.message for e in iprox.events(job.id) if e.type == "status"][-1] == "succeeded"

        subset = iprox.download_subset(job.id, tmp_path / "subset.jsonl")
        parquet = iprox.download_subset(job.id, tmp_path / "subset.parquet", "parquet")
        scores = {s.index: s.score for s in iprox.scores(job.id)}
        rows = jsonl(subset.read_text())
        check_subset(rows, scores, POOL, 3)
        assert pq.read_table(parquet).to_pylist() == rows
        ranked = list(iprox.scores(job.id, order="rank"))
        assert [s.id for s in ranked[:3]] == [r["id"] for r in rows]
        with pytest.raises(iprox_client.Conflict):
            iprox.cancel(job.id)  # it already finished


def test_the_cli_submits_waits_and_downloads(stack: Stack, tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps(_body(stack)))
    with live_api(stack) as url:
        env = os.environ | {"IPROX_URL": url, "IPROX_API_KEY": new_key()}

        def iprox(*args: str) -> subprocess.CompletedProcess[str]:
            cmd = [sys.executable, "-m", "worker.cli", "jobs", *args]
            return subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400
            )

        submitted = iprox("submit", str(request))
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        waited = iprox("wait", job_id, "--timeout", "300")
        assert waited.returncode == 0, waited.stderr + stack.worker_log.read_text()[-3000:]
        assert json.loads(waited.stdout)["status"] == "succeeded"
        out = tmp_path / "top.parquet"
        got = iprox("download", job_id, str(out), "--top-k", "2")
        assert got.returncode == 0, got.stderr
        assert [r["rank"] for r in pq.read_table(io.BytesIO(out.read_bytes())).to_pylist()] == [
            1,
            2,
        ]
        bad = iprox("download", "no-such-job", str(tmp_path / "x.jsonl"))
        assert bad.returncode == 2 and "404 not_found" in bad.stderr
