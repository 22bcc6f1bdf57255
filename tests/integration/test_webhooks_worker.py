"""A select job's webhook through the real Celery worker: the job succeeds without waiting on
its receiver, which fails twice; the worker's retry task delivers on the third attempt, signed,
and every attempt is in the job's events."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from service.config import get_settings
from tests.integration.conftest import Stack
from tests.integration.helpers import wait_terminal
from tests.service.plugin import new_key
from tests.service.receiver import webhook_receiver
from tests.worker.conftest import FAST_PROXY, FAST_SCORER, POOL, TARGET

pytestmark = pytest.mark.integration


def _file(stack: Stack, rows: list[dict[str, str]]) -> str:
    path = stack.data / f"{uuid.uuid4().hex[:8]}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.as_uri()


def test_the_worker_retries_a_failing_receiver_until_it_takes_the_delivery(
    api: TestClient, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The API accepts the 127.0.0.1 receiver for this test only (the worker always may).
    monkeypatch.setattr(get_settings(), "allowed_hosts", ["127.0.0.1"])
    auth = {"Authorization": f"Bearer {new_key()}"}
    with webhook_receiver(answers=[500, 502]) as hook:
        body = {
            "kind": "select",
            "dataset_uri": _file(stack, POOL),
            "target_uri": _file(stack, TARGET),
            "target_model": str(stack.model),
            "proxy": FAST_PROXY,
            "scorer": FAST_SCORER,
            "selection": {"top_k": 2},
            "metadata": {"run": "webhook"},
            "notify": {"url": hook.url, "events": ["succeeded", "failed"]},
        }
        r = api.post("/jobs", json=body, headers=auth)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        hook.secret = api.get("/webhooks/secret", headers=auth).json()["secret"]
        job = wait_terminal(api, job_id, auth, timeout=300)
        assert job["status"] == "succeeded", (job["error"], stack.worker_log.read_text()[-3000:])
        assert hook.arrived.wait(60), stack.worker_log.read_text()[-3000:]
        time.sleep(0.5)  # the delivery's own event is written after the receiver answered
    assert hook.rejected == [] and len(hook.headers) == 3
    (event,) = hook.received
    assert event["type"] == "job.succeeded"
    assert event["data"]["id"] == job_id and event["data"]["metadata"] == {"run": "webhook"}
    assert event["data"]["result"]["selected"] == 2
    events = api.get(f"/jobs/{job_id}/events", headers=auth).json()["items"]
    hooks = [e for e in events if e["type"] == "webhook"]
    assert [e["data"]["status_code"] for e in hooks] == [500, 502, 200]
    finished = next(e for e in events if e["type"] == "status" and e["message"] == "succeeded")
    assert finished["id"] < hooks[0]["id"]  # the job ended first; the deliveries came after
