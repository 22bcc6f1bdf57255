"""Webhooks through the API and one delivery step at a time: the notify field's checks, the
tenant's secret, signed deliveries to a receiver on 127.0.0.1, retries with backoff, events.
(With a real Celery worker retrying on its own: tests/integration/test_webhooks_worker.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import get_settings
from service.queue import TASK_DELIVER_WEBHOOK, get_dispatcher
from service.webhooks import delivery
from tests.service.receiver import webhook_receiver


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[object, ...]]] = []

    def enqueue(self, task_name: str, *args: object) -> None:
        self.sent.append((task_name, args))

    def ping(self) -> None:
        pass


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch, service_db: str) -> Iterator[Recorder]:
    """Messages the API sends, kept here (get_dispatcher is looked up at call time)."""
    rec = Recorder()
    monkeypatch.setattr("service.queue.get_dispatcher", lambda: rec)
    monkeypatch.setattr("service.jobs.router.get_dispatcher", lambda: rec)
    yield rec
    get_dispatcher.cache_clear()


@pytest.fixture
def local_hooks(monkeypatch: pytest.MonkeyPatch, service_db: str) -> Iterator[None]:
    """Receivers on 127.0.0.1 may be reached, attempts retried fast."""
    settings = get_settings()
    monkeypatch.setattr(settings, "allowed_hosts", ["127.0.0.1"])
    monkeypatch.setattr(settings, "webhook_backoff_s", 0.25)
    monkeypatch.setattr(settings, "webhook_max_attempts", 4)
    yield


def _ids(args: tuple[object, ...]) -> tuple[str, str, str]:
    """(job id, ending, webhook id) of a queued delivery."""
    job_id, ending, msg_id = (str(a) for a in args)
    return job_id, ending, msg_id


def _webhooks(client: TestClient, auth: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    items = client.get(f"/jobs/{job_id}/events", headers=auth).json()["items"]
    return [e for e in items if e["type"] == "webhook"]


def test_a_notify_url_must_pass_the_outbound_checks(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any], queue: Recorder
) -> None:
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/x", "ftp://example.com/x"):
        r = client.post("/jobs", json=select_body | {"notify": {"url": url}}, headers=auth)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "notify.url"
    r = client.post(
        "/jobs",
        json=select_body | {"notify": {"url": "https://8.8.8.8/h", "events": ["failed", "failed"]}},
        headers=auth,
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "notify.events"
    assert queue.sent == []  # nothing queued


def test_the_secret_is_made_with_the_first_notifying_job_and_rotates(
    client: TestClient,
    auth: dict[str, str],
    select_body: dict[str, Any],
    queue: Recorder,
    local_hooks: None,
) -> None:
    assert client.get("/webhooks/secret", headers=auth).status_code == 404
    r = client.post(
        "/jobs", json=select_body | {"notify": {"url": "http://127.0.0.1:9/h"}}, headers=auth
    )
    assert r.status_code == 202, r.text
    assert r.json()["request"]["notify"]["events"] == ["succeeded", "failed", "cancelled"]
    first = client.get("/webhooks/secret", headers=auth).json()["secret"]
    assert first.startswith("whsec_")
    rotated = client.post("/webhooks/secret", headers=auth).json()["secret"]
    assert (
        rotated != first
        and client.get("/webhooks/secret", headers=auth).json()["secret"] == rotated
    )


def test_a_cancelled_job_is_announced_signed_after_two_failures(
    client: TestClient,
    auth: dict[str, str],
    select_body: dict[str, Any],
    queue: Recorder,
    local_hooks: None,
) -> None:
    with webhook_receiver(answers=[500, 503]) as hook:
        body = select_body | {"notify": {"url": hook.url, "events": ["cancelled"]}}
        job_id = client.post("/jobs", json=body, headers=auth).json()["id"]
        hook.secret = client.get("/webhooks/secret", headers=auth).json()["secret"]
        assert client.post(f"/jobs/{job_id}/cancel", headers=auth).json()["status"] == "cancelled"
        hooks = [args for name, args in queue.sent if name == TASK_DELIVER_WEBHOOK]
        assert hooks == [(job_id, "cancelled", f"msg_{job_id}_cancelled")]  # after the commit
        # What the Celery task does: one attempt, then the next after the returned backoff.
        waits, attempt = [], 1
        while (wait := delivery.deliver(*_ids(hooks[0]), attempt, get_settings())) is not None:
            waits.append(wait)
            attempt += 1
        assert waits == [0.25, 0.5] and attempt == 3
    assert hook.rejected == [] and len(hook.headers) == 3
    assert {h["webhook-id"] for h in hook.headers} == {f"msg_{job_id}_cancelled"}
    (event,) = hook.received
    assert event["type"] == "job.cancelled"
    assert event["data"]["id"] == job_id and event["data"]["status"] == "cancelled"
    recorded = _webhooks(client, auth, job_id)
    assert [e["data"]["attempt"] for e in recorded] == [1, 2, 3]
    assert [e["data"]["status_code"] for e in recorded] == [500, 503, 200]
    assert "delivered" in recorded[-1]["message"] and "next in 0.25 s" in recorded[0]["message"]


def test_a_receiver_that_keeps_failing_is_given_up_and_events_not_asked_for_are_not_sent(
    client: TestClient,
    auth: dict[str, str],
    select_body: dict[str, Any],
    queue: Recorder,
    local_hooks: None,
) -> None:
    with webhook_receiver(answers=[500] * 10) as hook:
        body = select_body | {"notify": {"url": hook.url}}
        job_id = client.post("/jobs", json=body, headers=auth).json()["id"]
        hook.secret = client.get("/webhooks/secret", headers=auth).json()["secret"]
        client.post(f"/jobs/{job_id}/cancel", headers=auth)
        args = next(a for n, a in queue.sent if n == TASK_DELIVER_WEBHOOK)
        attempt = 1
        while delivery.deliver(*_ids(args), attempt, get_settings()) is not None:
            attempt += 1
        assert attempt == 4 and hook.received == []
        assert (
            "given up after 4 attempts: HTTP 500" in _webhooks(client, auth, job_id)[-1]["message"]
        )

        only_success = select_body | {"notify": {"url": hook.url, "events": ["succeeded"]}}
        other = client.post("/jobs", json=only_success, headers=auth).json()["id"]
        client.post(f"/jobs/{other}/cancel", headers=auth)
        assert not any(a[0] == other for n, a in queue.sent if n == TASK_DELIVER_WEBHOOK)


def test_a_tampered_secret_fails_verification(
    client: TestClient,
    auth: dict[str, str],
    select_body: dict[str, Any],
    queue: Recorder,
    local_hooks: None,
) -> None:
    with webhook_receiver() as hook:
        job_id = client.post(
            "/jobs", json=select_body | {"notify": {"url": hook.url}}, headers=auth
        ).json()["id"]
        client.post("/webhooks/secret", headers=auth)  # rotated: the receiver holds the old one
        hook.secret = "whsec_" + "A" * 44
        client.post(f"/jobs/{job_id}/cancel", headers=auth)
        args = next(a for n, a in queue.sent if n == TASK_DELIVER_WEBHOOK)
        assert delivery.deliver(*_ids(args), 1, get_settings()) == 0.25
    assert hook.rejected == ["no signature matches"] and hook.received == []
