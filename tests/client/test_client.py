"""iprox_client against a scripted transport: retries, idempotency, typed errors, waiting,
downloads. (Against the real API and worker: tests/integration/test_client_pipeline.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import iprox_client
import pytest
from iprox_client import Client

JOB: dict[str, Any] = {
    "id": "j1",
    "kind": "select",
    "status": "queued",
    "stage": None,
    "progress": {"done": 0, "total": 0},
    "partial": False,
    "created_at": "2026-12-01T00:00:00Z",
    "started_at": None,
    "finished_at": None,
    "updated_at": "2026-12-01T00:00:00Z",
    "error": None,
    "result": None,
    "proxy_id": None,
    "metadata": {},
    "request": {},
    "links": {},
}


def problem(status: int, code: str, field: str | None = None, **headers: str) -> httpx.Response:
    body: dict[str, Any] = {"status": status, "code": code, "title": code, "detail": f"{code}!"}
    if field:
        body["errors"] = [{"field": field, "message": "bad"}]
    return httpx.Response(
        status, json=body, headers={"content-type": "application/problem+json", **headers}
    )


def client(
    handler: Callable[[httpx.Request], httpx.Response], **kw: Any
) -> tuple[Client, list[float]]:
    slept: list[float] = []
    c = Client(
        "http://api.test", "k", transport=httpx.MockTransport(handler), sleep=slept.append, **kw
    )
    return c, slept


def test_submit_retries_429_503_and_connection_errors_with_one_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if len(seen) == 1:
            raise httpx.ConnectError("refused", request=req)
        if len(seen) == 2:
            return problem(503, "overloaded", **{"Retry-After": "1"})
        if len(seen) == 3:
            return problem(429, "rate_limited")
        return httpx.Response(202, json=JOB)

    c, slept = client(handler, backoff=0.5)
    job = c.submit({"kind": "select"}, dataset_uri="file:///p.jsonl")
    assert job.id == "j1" and job.status == "queued" and not job.done
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(seen) == 4 and len(keys) == 1  # the same key on every retry
    assert json.loads(seen[-1].content) == {"kind": "select", "dataset_uri": "file:///p.jsonl"}
    assert seen[0].headers["Authorization"] == "Bearer k"
    assert slept == [0.5, 1.0, 2.0]  # backoff, Retry-After, backoff
    c.submit({"kind": "select"})
    assert seen[-1].headers["Idempotency-Key"] not in keys  # a new call, a new key


def test_retries_run_out_into_typed_errors() -> None:
    c, slept = client(lambda req: problem(503, "database_unavailable"), retries=2)
    with pytest.raises(iprox_client.Unavailable) as err:
        c.get("j1")
    assert err.value.code == "database_unavailable" and len(slept) == 2

    def down(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    c, _ = client(down, retries=1)
    with pytest.raises(iprox_client.ConnectionFailed, match="after 2 attempts"):
        c.get("j1")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, iprox_client.Unauthorized),
        (404, iprox_client.NotFound),
        (409, iprox_client.Conflict),
        (422, iprox_client.ValidationFailed),
    ],
)
def test_problems_become_typed_exceptions_naming_the_field(
    status: int, kind: type[iprox_client.ApiError]
) -> None:
    c, slept = client(lambda req: problem(status, "x", field="selection.top_k"))
    with pytest.raises(kind) as err:
        c.submit({})
    assert err.value.status == status and err.value.field == "selection.top_k"
    assert "selection.top_k" in str(err.value) and slept == []  # never retried


def test_wait_reports_each_change_and_ends_on_a_terminal_status() -> None:
    states: list[dict[str, Any]] = [
        {"status": "queued"},
        {"status": "running", "stage": "scoring", "progress": {"done": 2, "total": 6}},
        {"status": "running", "stage": "scoring", "progress": {"done": 2, "total": 6}},
        {"status": "succeeded", "stage": "ranking", "progress": {"done": 6, "total": 6}},
    ]
    polls = iter(states)
    c, _ = client(lambda req: httpx.Response(200, json=JOB | next(polls)))
    heard: list[tuple[str, int]] = []
    job = c.wait("j1", on_progress=lambda j: heard.append((j.status, j.progress.done)))
    assert job.status == "succeeded"
    assert heard == [("queued", 0), ("running", 2), ("succeeded", 6)]


def test_wait_raises_on_failure_and_on_timeout() -> None:
    failed = JOB | {"status": "failed", "error": {"code": "data_format", "message": "bad row"}}
    c, _ = client(lambda req: httpx.Response(200, json=failed))
    with pytest.raises(iprox_client.JobFailed, match=r"\[data_format\] bad row"):
        c.wait("j1")
    assert c.wait("j1", raise_on_failure=False).status == "failed"
    c, _ = client(lambda req: httpx.Response(200, json=JOB))
    with pytest.raises(iprox_client.WaitTimeout, match="still queued"):
        c.wait("j1", timeout=0.0)


def test_events_and_scores_follow_their_pages() -> None:
    """Both lists page by ``cursor`` + ``has_more``; the client follows until has_more is false."""

    def handler(req: httpx.Request) -> httpx.Response:
        q = req.url.params
        start = int(q["cursor"]) if "cursor" in q else 0  # the test's cursors are offsets
        if req.url.path.endswith("/events"):
            items: list[dict[str, object]] = [
                {
                    "id": i + 1,
                    "created_at": JOB["created_at"],
                    "type": "status",
                    "stage": None,
                    "message": "m",
                    "data": None,
                }
                for i in range(start, min(start + 2, 5))
            ]
        else:
            assert q["order"] == "rank"
            items = [
                {"index": i, "id": str(i), "score": -i, "rank": i + 1}
                for i in range(start, min(start + 2, 5))
            ]
        more = start + 2 < 5
        body: dict[str, object] = {
            "items": items,
            "next_cursor": str(start + 2),  # the last page still names where to resume
            "has_more": more,
        }
        if not req.url.path.endswith("/events"):
            body |= {"partial": False, "count": 5}
        return httpx.Response(200, json=body)

    c, _ = client(handler)
    assert [e.id for e in c.events("j1")] == [1, 2, 3, 4, 5]
    assert [s.rank for s in c.scores("j1", order="rank")] == [1, 2, 3, 4, 5]


def test_a_download_appears_only_when_whole(tmp_path: Path) -> None:
    c, _ = client(lambda req: httpx.Response(200, content=b'{"a": 1}\n' * 3))
    out = c.download_subset("j1", tmp_path / "s.jsonl")
    assert out.read_bytes() == b'{"a": 1}\n' * 3
    c, _ = client(lambda req: problem(409, "conflict"))
    with pytest.raises(iprox_client.Conflict):
        c.download_subset("j1", tmp_path / "t.parquet", "parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]


def test_the_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IPROX_API_KEY", raising=False)
    with pytest.raises(ValueError, match="IPROX_API_KEY"):
        Client("http://api.test")
    monkeypatch.setenv("IPROX_API_KEY", "from-env")
    Client("http://api.test").close()


def test_webhook_signatures_verify_and_tampering_is_refused() -> None:
    from iprox_client.webhooks import WebhookVerificationError, sign, verify_webhook

    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"type": "job.succeeded"}'
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1,bogus " + sign(secret, "msg_1", 1700000000, body),
    }
    assert verify_webhook(secret, headers, body, now=1700000010) == {"type": "job.succeeded"}
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify_webhook(secret, headers, body + b" ", now=1700000010)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(secret, headers, body, now=1700000000 + 301)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_webhook(secret, {}, body)


def test_signatures_match_the_standard_webhooks_example() -> None:
    from iprox_client.webhooks import sign

    # The example of the Standard Webhooks specification.
    got = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_estimate_posts_a_dry_run_and_returns_its_answer() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"dry_run": True, "total_seconds": 12.5})

    c, _ = client(handler)
    assert c.estimate({"kind": "select"})["total_seconds"] == 12.5
    assert json.loads(seen[0].content) == {"kind": "select", "dry_run": True}
