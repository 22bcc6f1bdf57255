"""A select job end to end through a real Celery worker process, Redis and Postgres, with the
artifacts under a file:// URL; then a second job reusing its proxy by id."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Mapping, Sequence

import pytest
from fastapi.testclient import TestClient

from service.db import session_scope
from service.models import Proxy
from tests.integration.conftest import Stack
from tests.integration.helpers import check_subset, jsonl, wait_terminal
from tests.service.plugin import new_key
from tests.worker.conftest import FAST_PROXY, FAST_SCORER, POOL, TARGET

pytestmark = pytest.mark.integration


def _file(stack: Stack, rows: Sequence[Mapping[str, object]]) -> str:
    path = stack.data / f"{uuid.uuid4().hex[:8]}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.as_uri()


def test_select_job_end_to_end(api: TestClient, stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {new_key()}"}
    body = {
        "kind": "select",
        "dataset_uri": _file(stack, POOL),
        "target_uri": _file(stack, TARGET),
        "target_model": str(stack.model),
        "proxy": FAST_PROXY,
        "scorer": FAST_SCORER,
        "selection": {"top_k": 4},
        "metadata": {"suite": "integration"},
    }
    r = api.post("/jobs", json=body, headers=auth | {"Idempotency-Key": "e2e"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = wait_terminal(api, job_id, auth, timeout=300)
    assert job["status"] == "succeeded", (job["error"], stack.worker_log.read_text()[-3000:])
    assert job["progress"] == {"done": 6, "total": 6, "unit": "samples"}
    scores = api.get(f"/jobs/{job_id}/scores", headers=auth).json()
    assert scores["count"] == 6 and not scores["partial"]
    by_index = {s["index"]: s["score"] for s in scores["items"]}
    subset = jsonl(api.get(f"/jobs/{job_id}/subset", headers=auth).text)
    check_subset(subset, by_index, POOL, 4)
    top2 = jsonl(api.get(f"/jobs/{job_id}/subset", params={"top_k": 2}, headers=auth).text)
    assert top2 == subset[:2]
    events = api.get(f"/jobs/{job_id}/events", headers=auth).json()["items"]
    metrics = [e for e in events if e["type"] == "metric"]
    assert any(e["message"] == "pool planned" and e["data"]["shards"] == 2 for e in metrics)
    proxy_id = job["result"]["proxy_id"]
    assert api.get(f"/proxies/{proxy_id}", headers=auth).json()["job_id"] == job_id
    ready = api.get("/readyz", params={"min_workers": 1})
    assert ready.status_code == 200, ready.text
    # Workers of other queues (another checkout's tests on this Redis) are not this API's.
    [worker] = ready.json()["workers"]
    assert worker["device"] == "cpu" and worker["queues"] == [stack.env["IPROX_QUEUE"]]

    # The worker uploaded its artifacts under the URL, and the database records the URL.
    kept = stack.artifacts / "proxies" / proxy_id
    with session_scope() as s:
        row = s.get(Proxy, proxy_id)
        assert row is not None and row.path == kept.as_uri()
    assert (kept / "proxy.json").is_file()
    uploaded = (stack.artifacts / "jobs" / job_id / "subset.jsonl").read_bytes()
    assert hashlib.sha256(uploaded).hexdigest() == job["result"]["subset_sha256"]
    assert jsonl(uploaded.decode()) == subset

    # A later job reuses the proxy by id: with the worker's local copies gone, it downloads it.
    shutil.rmtree(stack.work / "cache")
    body |= {"proxy": {"proxy_id": proxy_id}, "metadata": {"suite": "integration-reuse"}}
    r = api.post("/jobs", json=body, headers=auth)
    assert r.status_code == 202, r.text
    again = wait_terminal(api, r.json()["id"], auth, timeout=300)
    assert again["status"] == "succeeded", (again["error"], stack.worker_log.read_text()[-3000:])
    assert again["result"]["proxy_id"] == proxy_id
    cached = stack.work / "cache" / "proxies" / proxy_id / "proxy.json"
    assert cached.read_bytes() == (kept / "proxy.json").read_bytes()
    again_subset = jsonl(api.get(f"/jobs/{again['id']}/subset", headers=auth).text)
    assert [r["id"] for r in again_subset] == [r["id"] for r in subset]  # same proxy, same ranking
