"""A select job end to end through a real Celery worker process, Redis and Postgres."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence

import pytest
from fastapi.testclient import TestClient

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
    assert job["progress"] == {"done": 6, "total": 6}
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
