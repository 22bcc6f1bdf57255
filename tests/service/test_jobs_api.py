"""/jobs against real Postgres and Redis: submit, validate, idempotency, list, cancel, read."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.config import get_settings
from service.db import session_scope
from service.jobs import repository as repo
from service.jobs import state
from service.jobs.service import subset_parts
from service.models import Job, JobStage
from tests.service.kit import REDIS_DB_SERVICE
from tests.service.object_store import memory_object_stores

PROBLEM = "application/problem+json"


def queued_messages() -> int:
    return int(redis.Redis(db=REDIS_DB_SERVICE).llen(get_settings().queue))


def job_count() -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def test_submit_returns_202_location_and_queues_one_message(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any]
) -> None:
    before = queued_messages()
    r = client.post("/jobs", json=select_body, headers=auth)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["kind"] == "select"
    assert job["metadata"] == {"team": "nlp"}
    assert job["progress"] == {"done": 0, "total": 0, "unit": None}
    assert queued_messages() == before + 1
    got = client.get(f"/jobs/{job['id']}", headers=auth).json()
    assert got["id"] == job["id"] and got["request"]["selection"]["top_k"] == 2


def test_get_by_id_answers_what_the_create_and_list_answers_say(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any]
) -> None:
    # GET /jobs/{id} reads with one Core query (job row joined to its labels); POST and the
    # list read through the ORM. Several labels: one joined row each, one job.
    body = select_body | {"metadata": {"team": "nlp", "run": "7", "owner": "ana"}}
    created = client.post("/jobs", json=body, headers=auth).json()
    got = client.get(f"/jobs/{created['id']}", headers=auth)
    assert got.status_code == 200 and got.headers["content-type"] == "application/json"
    listed = client.get("/jobs", headers=auth).json()["items"]
    assert got.json() == created == next(j for j in listed if j["id"] == created["id"])
    assert got.json()["metadata"] == {"team": "nlp", "run": "7", "owner": "ana"}
    plain = client.post("/jobs", json=select_body | {"metadata": {}}, headers=auth).json()
    assert client.get(f"/jobs/{plain['id']}", headers=auth).json()["metadata"] == {}


def _assert_problem(r: Any, field: str) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == 422 and body["code"] == "validation_failed"
    assert field in [e["field"] for e in body["errors"]], body


def test_rejected_requests_name_the_field_and_write_nothing(
    client: TestClient,
    auth: dict[str, str],
    select_body: dict[str, Any],
    data_file: Callable[..., str],
) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("target_model", {"target_model": "no-such-model"}),
        ("target_model", {"target_model": "/etc"}),
        ("dataset_uri", {"dataset_uri": select_body["dataset_uri"] + ".missing"}),
        ("dataset_uri", {"dataset_uri": "file:///etc/passwd"}),
        ("dataset_uri", {"dataset_uri": "ftp://example.org/x.jsonl"}),
        ("dataset_uri", {"dataset_uri": data_file("{not json\n")}),
        ("dataset_uri", {"dataset_uri": data_file([{"foo": 1}])}),
        ("target_uri", {"target_uri": None}),
        ("selection.top_k", {"selection": {"top_k": 0}}),
        ("selection", {"selection": {"top_k": 3, "fraction": 0.5}}),
        ("selection", {"selection": {}}),
        ("selection.fraction", {"selection": {"fraction": 1.5}}),
        ("selection", {"selection": None}),
        ("proxy.sparsity", {"proxy": {"sparsity": 1.2}}),
        ("proxy.proxy_id", {"proxy": {"proxy_id": "00000000-0000-0000-0000-000000000000"}}),
        ("kind", {"kind": "train"}),
        ("scorer.features", {"scorer": {"method": "influence", "features": "exact"}}),
        ("scorer.features", {"scorer": {"features": "sketched"}}),
        (
            "scorer.projection_allocation",
            {"scorer": {"features": "projected", "projection_allocation": "largest"}},
        ),
        # Below one feature per layer suffix: a 422 here, not a job that fails as internal.
        ("scorer.proj_dim", {"scorer": {"features": "projected", "proj_dim": 2}}),
        ("proxy.max_length", {"proxy": {"max_length": 1}}),
    ]
    jobs, messages = job_count(), queued_messages()
    for field, change in cases:
        body = copy.deepcopy(select_body) | change
        _assert_problem(client.post("/jobs", json=body, headers=auth), field)
    assert job_count() == jobs and queued_messages() == messages


def test_path_traversal_is_rejected(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any], svc_roots: dict[str, Any]
) -> None:
    data_root = svc_roots["data"]
    (data_root.parent / "secret.jsonl").write_text('{"text": "secret"}\n')
    link = data_root / "escape.jsonl"
    link.symlink_to(data_root.parent / "secret.jsonl")
    for uri in (
        f"file://{data_root}/../secret.jsonl",
        f"file://{data_root}/%2e%2e/secret.jsonl",
        link.as_uri(),
    ):
        r = client.post("/jobs", json=select_body | {"dataset_uri": uri}, headers=auth)
        _assert_problem(r, "dataset_uri")


def test_object_store_uris_are_checked_before_queueing(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any]
) -> None:
    with memory_object_stores() as store:
        store.pipe("s3://bucket/pool.jsonl", b'{"text": "a"}\n')
        ok = select_body | {"dataset_uri": "s3://bucket/pool.jsonl"}
        assert client.post("/jobs", json=ok, headers=auth).status_code == 202
        jobs = job_count()
        missing = ok | {"target_uri": "gs://bucket/missing.jsonl"}
        r = client.post("/jobs", json=missing, headers=auth)
        _assert_problem(r, "target_uri")
        assert "no such object" in r.json()["detail"] and job_count() == jobs


def test_idempotency_key_replays_or_conflicts(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any]
) -> None:
    headers = auth | {"Idempotency-Key": "retry-1"}
    first = client.post("/jobs", json=select_body, headers=headers)
    messages = queued_messages()
    again = client.post("/jobs", json=select_body, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert queued_messages() == messages
    changed = select_body | {"selection": {"top_k": 3}}
    r = client.post("/jobs", json=changed, headers=headers)
    assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused"
    # Keys are per tenant: another tenant may use the same key for its own job.


def test_idempotency_keys_are_per_tenant(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    select_body: dict[str, Any],
) -> None:
    a = client.post("/jobs", json=select_body, headers=auth | {"Idempotency-Key": "k"})
    b = client.post("/jobs", json=select_body, headers=other_auth | {"Idempotency-Key": "k"})
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]


def test_auth_is_required(client: TestClient, select_body: dict[str, Any]) -> None:
    for headers in ({}, {"Authorization": "Bearer iprox_wrong"}, {"Authorization": "Basic x"}):
        r = client.get("/jobs", headers=headers)
        assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)
    assert client.post("/jobs", json=select_body).status_code == 401


def test_list_paginates_and_filters(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any]
) -> None:
    ids = []
    for i in range(5):
        body = select_body | {"metadata": {"run": "a" if i % 2 else "b", "i": str(i)}}
        ids.append(client.post("/jobs", json=body, headers=auth).json()["id"])
    client.post(f"/jobs/{ids[0]}/cancel", headers=auth)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/jobs", params=params, headers=auth).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == ids[::-1]
    # The last page still names its end, so a client can ask again later.
    assert cursor is not None
    after_end = client.get("/jobs", params={"cursor": cursor}, headers=auth).json()
    assert after_end == {"items": [], "next_cursor": None, "has_more": False}
    only_a = client.get("/jobs", params={"metadata.run": "a"}, headers=auth).json()["items"]
    assert sorted(j["id"] for j in only_a) == sorted([ids[1], ids[3]])
    both = client.get("/jobs", params={"metadata.run": "b", "metadata.i": "2"}, headers=auth)
    assert [j["id"] for j in both.json()["items"]] == [ids[2]]
    cancelled = client.get("/jobs", params={"status": "cancelled"}, headers=auth).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    two = client.get("/jobs", params=[("status", "cancelled"), ("status", "queued")], headers=auth)
    assert len(two.json()["items"]) == 5
    bad = client.get("/jobs", params={"cursor": "garbage"}, headers=auth)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"


def test_cancel_queued_job_and_events(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any]
) -> None:
    job_id = client.post("/jobs", json=select_body, headers=auth).json()["id"]
    r = client.post(f"/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    again = client.post(f"/jobs/{job_id}/cancel", headers=auth)
    assert again.status_code == 409 and again.json()["code"] == "conflict"
    events = client.get(f"/jobs/{job_id}/events", headers=auth).json()["items"]
    assert [(e["type"], e["message"]) for e in events] == [
        ("status", "queued"),
        ("status", "cancelled while queued"),
    ]


def test_cancel_running_job_asks_the_worker_to_stop(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any]
) -> None:
    job_id = client.post("/jobs", json=select_body, headers=auth).json()["id"]
    with session_scope() as s:
        assert state.start(s, job_id) is not None
        assert state.set_stage(s, job_id, JobStage.SCORING, total=5)
    assert client.post(f"/jobs/{job_id}/cancel", headers=auth).json()["status"] == "cancelling"
    with session_scope() as s:
        assert state.report_progress(s, job_id, 2, 5).value == "cancelling"
        repo.upsert_scores(s, job_id, [(0, "0", 0.5), (1, "1", 0.25)])
        state.cancelled(s, job_id, {"scored": 2, "pool_size": 5})
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "cancelled" and job["partial"] is True
    assert job["progress"] == {"done": 2, "total": 5, "unit": "samples"}
    scores = client.get(f"/jobs/{job_id}/scores", headers=auth).json()
    assert scores["partial"] is True and scores["count"] == 2
    subset = client.get(f"/jobs/{job_id}/subset", headers=auth)
    assert subset.status_code == 409 and "partial scores" in subset.json()["detail"]


def test_scores_page_and_upsert_overwrites(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any]
) -> None:
    job_id = client.post("/jobs", json=select_body, headers=auth).json()["id"]
    with session_scope() as s:
        repo.upsert_scores(s, job_id, [(i, f"id{i}", float(i)) for i in range(5)])
    with session_scope() as s:  # a redelivered shard writes the same keys again
        repo.upsert_scores(s, job_id, [(i, f"id{i}", 10.0 + i) for i in range(3)])
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = client.get(f"/jobs/{job_id}/scores", params=params, headers=auth).json()
        items += page["items"]
        params["cursor"] = page["next_cursor"]
        if not page["has_more"]:
            break
    assert [(x["index"], x["score"]) for x in items] == [
        (0, 10.0),
        (1, 11.0),
        (2, 12.0),
        (3, 3.0),
        (4, 4.0),
    ]
    assert page["count"] == 5 and page["partial"] is True


def test_subset_streams_ranked_records(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any]
) -> None:
    job_id = client.post("/jobs", json=select_body, headers=auth).json()["id"]
    path = get_settings().artifacts.workspace(*subset_parts(job_id))  # a folder root: in place
    path.parent.mkdir(parents=True)
    path.write_text('{"rank": 1, "score": 0.9}\n{"rank": 2, "score": 0.5}\n')
    assert client.get(f"/jobs/{job_id}/subset", headers=auth).status_code == 409
    with session_scope() as s:
        state.start(s, job_id)
        state.succeed(s, job_id, {"selected": 2})
    r = client.get(f"/jobs/{job_id}/subset", params={"top_k": 1}, headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    assert r.text == '{"rank": 1, "score": 0.9}\n'
    j = client.get(f"/jobs/{job_id}/subset", params={"format": "json"}, headers=auth)
    assert j.json() == [{"rank": 1, "score": 0.9}, {"rank": 2, "score": 0.5}]
    assert client.get(f"/jobs/{job_id}/scores", headers=auth).json()["partial"] is False


def test_tenant_isolation_on_every_job_endpoint(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    select_body: dict[str, Any],
) -> None:
    job_id = client.post("/jobs", json=select_body, headers=auth).json()["id"]
    for method, path in [
        ("GET", f"/jobs/{job_id}"),
        ("POST", f"/jobs/{job_id}/cancel"),
        ("GET", f"/jobs/{job_id}/events"),
        ("GET", f"/jobs/{job_id}/scores"),
        ("GET", f"/jobs/{job_id}/subset"),
    ]:
        r = client.request(method, path, headers=other_auth)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"].startswith(PROBLEM)
    assert client.get("/jobs", headers=other_auth).json()["items"] == []
    assert client.get(f"/jobs/{job_id}", headers=auth).json()["status"] == "queued"


def test_health_probes_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["broker"] == "ok"
    spec = client.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}/subset", "/proxies/{proxy_id}"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_broker_down_fails_the_job_and_answers_503(
    client: TestClient,
    auth: dict[str, str],
    select_body: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import service.jobs.router as router
    import service.main as main

    class DownBroker:
        def enqueue(self, task_name: str, *args: object) -> None:
            raise ConnectionError("connection refused")

        def ping(self) -> None:
            raise ConnectionError("connection refused")

    monkeypatch.setattr(router, "get_dispatcher", lambda: DownBroker())
    monkeypatch.setattr(main, "get_dispatcher", lambda: DownBroker())
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "broker" in ready.json()["detail"]
    r = client.post("/jobs", json=select_body, headers=auth)
    assert r.status_code == 503 and r.json()["code"] == "unavailable"
    failed = client.get("/jobs", params={"status": "failed"}, headers=auth).json()["items"]
    assert len(failed) == 1 and failed[0]["error"]["code"] == "broker_unavailable"


def test_every_list_pages_in_one_style(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any]
) -> None:
    job_id = client.post("/jobs", json=select_body, headers=auth).json()["id"]
    client.post(f"/jobs/{job_id}/cancel", headers=auth)
    first = client.get(f"/jobs/{job_id}/events", params={"limit": 1}, headers=auth).json()
    assert first["has_more"] is True and [e["message"] for e in first["items"]] == ["queued"]
    rest = client.get(
        f"/jobs/{job_id}/events", params={"cursor": first["next_cursor"]}, headers=auth
    ).json()
    assert [e["message"] for e in rest["items"]] == ["cancelled while queued"]
    assert rest["has_more"] is False and rest["next_cursor"] is not None
    # A cursor of one list is refused by another, naming the parameter.
    for path in ("/jobs", f"/jobs/{job_id}/scores", "/proxies"):
        r = client.get(path, params={"cursor": first["next_cursor"]}, headers=auth)
        assert r.status_code == 422, (path, r.text)
        assert r.json()["errors"][0]["field"] == "cursor"
    for path in ("/jobs", f"/jobs/{job_id}/events", f"/jobs/{job_id}/scores", "/proxies"):
        page = client.get(path, headers=auth).json()
        assert {"items", "next_cursor", "has_more"} <= set(page), path


def test_readyz_lists_no_worker_when_none_answers(client: TestClient) -> None:
    # The service tier runs no worker on its queue: the ping comes back empty, in bounded time.
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] == []
    r = client.get("/readyz", params={"min_workers": 1})
    assert r.status_code == 503 and r.headers["content-type"].startswith(PROBLEM)
    assert "0 worker(s) answered" in r.json()["detail"]
