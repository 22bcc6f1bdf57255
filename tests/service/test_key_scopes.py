"""Key scopes against real Postgres and Redis: a read key reads its tenant's jobs, scores and
subsets and is refused every change with a 403 problem+json naming its scope; a write key (the
default) does everything; the key cache keeps the scope; a bad scope is never stored."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.auth import deps, keys
from service.auth.keys import KeyAccess, KeyCache, create_key, hash_key, list_keys
from service.config import get_settings
from service.db import session_scope
from service.errors import ValidationFailed
from service.jobs import repository as repo
from service.jobs import state
from service.jobs.service import subset_parts
from service.models import Job, KeyScope
from tests.service.kit import REDIS_DB_SERVICE
from tests.service.plugin import new_key

PROBLEM = "application/problem+json"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _stored() -> tuple[int, int]:
    """Jobs in the database and messages on the queue."""
    with session_scope() as s:
        jobs = int(s.scalar(select(func.count()).select_from(Job)) or 0)
    return jobs, int(redis.Redis(db=REDIS_DB_SERVICE).llen(get_settings().queue))


@pytest.fixture
def tenant_keys(service_db: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers of a write key and a read key of one fresh tenant."""
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    return _bearer(new_key(tenant)), _bearer(new_key(tenant, scope="read"))


def _finished_job(client: TestClient, write: dict[str, str], body: dict[str, Any]) -> str:
    """A succeeded select job with three scores and a two-record subset."""
    job_id = str(client.post("/jobs", json=body, headers=write).json()["id"])
    path = get_settings().artifacts.workspace(*subset_parts(job_id))
    path.parent.mkdir(parents=True)
    path.write_text('{"id": "b", "rank": 1, "score": 0.9}\n{"id": "a", "rank": 2, "score": 0.5}\n')
    with session_scope() as s:
        state.start(s, job_id)
        repo.upsert_scores(s, job_id, [(0, "a", 0.5), (1, "b", 0.9), (2, "c", 0.1)])
        state.succeed(s, job_id, {"selected": 2})
    return job_id


def _assert_forbidden(r: Any, method: str, path: str) -> None:
    assert r.status_code == 403, (method, path, r.text)
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.json() == {
        "type": "https://iprox.dev/problems/forbidden",
        "title": "This API key may not do this",
        "status": 403,
        "detail": f"this API key has scope 'read'; {method} {path} needs a key with scope 'write'",
        "instance": path,
        "code": "forbidden",
    }
    assert "www-authenticate" not in r.headers  # the key is fine; asking again will not help


def test_a_read_key_reads_its_tenants_jobs_events_scores_and_subset(
    client: TestClient,
    tenant_keys: tuple[dict[str, str], dict[str, str]],
    other_auth: dict[str, str],
    select_body: dict[str, Any],
) -> None:
    write, read = tenant_keys
    job_id = _finished_job(client, write, select_body)
    listed = client.get("/jobs", headers=read)
    assert listed.status_code == 200 and [j["id"] for j in listed.json()["items"]] == [job_id]
    job = client.get(f"/jobs/{job_id}", headers=read)
    assert job.status_code == 200 and job.json()["status"] == "succeeded"
    events = client.get(f"/jobs/{job_id}/events", headers=read).json()["items"]
    assert [e["message"] for e in events if e["type"] == "status"][-1] == "succeeded"
    scores = client.get(f"/jobs/{job_id}/scores", params={"order": "rank"}, headers=read)
    assert [s["id"] for s in scores.json()["items"]] == ["b", "a", "c"]
    csv = client.get(f"/jobs/{job_id}/scores", params={"format": "csv"}, headers=read)
    assert csv.status_code == 200 and len(csv.text.splitlines()) == 4  # a header, three rows
    subset = client.get(f"/jobs/{job_id}/subset", params={"format": "json"}, headers=read)
    assert subset.status_code == 200 and [r["id"] for r in subset.json()] == ["b", "a"]
    assert client.get("/proxies", headers=read).json()["items"] == []
    # The scope adds nothing to tenancy: another tenant still finds no such job.
    assert client.get(f"/jobs/{job_id}", headers=other_auth).status_code == 404


def test_a_read_key_is_refused_every_change_and_nothing_is_stored(
    client: TestClient,
    tenant_keys: tuple[dict[str, str], dict[str, str]],
    select_body: dict[str, Any],
) -> None:
    write, read = tenant_keys
    job_id = client.post("/jobs", json=select_body, headers=write).json()["id"]
    before = _stored()
    _assert_forbidden(client.post("/jobs", json=select_body, headers=read), "POST", "/jobs")
    # Refused before the body is checked: a read key learns nothing from a 422 either.
    bad = select_body | {"selection": {"top_k": 0}}
    _assert_forbidden(client.post("/jobs", json=bad, headers=read), "POST", "/jobs")
    dry = select_body | {"dry_run": True}
    _assert_forbidden(client.post("/jobs", json=dry, headers=read), "POST", "/jobs")
    cancel = f"/jobs/{job_id}/cancel"
    _assert_forbidden(client.post(cancel, headers=read), "POST", cancel)
    _assert_forbidden(client.post("/webhooks/secret", headers=read), "POST", "/webhooks/secret")
    # A GET, but the secret lets its holder forge deliveries: reading it needs write too.
    _assert_forbidden(client.get("/webhooks/secret", headers=read), "GET", "/webhooks/secret")
    assert _stored() == before
    assert client.get(f"/jobs/{job_id}", headers=read).json()["status"] == "queued"
    assert client.get("/webhooks/secret", headers=write).status_code == 404  # none was made
    # The path has no DELETE at all: that is a 405 for any key, not a 403.
    gone = client.delete(f"/jobs/{job_id}", headers=read)
    assert gone.status_code == 405 and gone.json()["code"] == "method_not_allowed"


def test_every_operation_but_get_is_refused_to_a_read_key(
    client: TestClient,
    tenant_keys: tuple[dict[str, str], dict[str, str]],
    select_body: dict[str, Any],
) -> None:
    # From the document, so that an endpoint added later is covered without editing this test.
    write, read = tenant_keys
    job_id = client.post("/jobs", json=select_body, headers=write).json()["id"]
    spec = client.get("/openapi.json").json()
    changes = [
        (method.upper(), re.sub(r"\{[^}]+\}", job_id, path))
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if op.get("security") and method not in ("get", "head")
    ]
    assert len(changes) == 3
    for method, path in changes:
        _assert_forbidden(
            client.request(method, path, json=select_body, headers=read), method, path
        )


def test_a_write_key_still_does_everything(
    client: TestClient,
    tenant_keys: tuple[dict[str, str], dict[str, str]],
    select_body: dict[str, Any],
) -> None:
    write, _ = tenant_keys
    created = client.post("/jobs", json=select_body, headers=write)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert (
        client.post("/jobs", json=select_body | {"dry_run": True}, headers=write).status_code == 200
    )
    cancelled = client.post(f"/jobs/{job_id}/cancel", headers=write)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    secret = client.post("/webhooks/secret", headers=write)
    assert secret.status_code == 200 and secret.json()["secret"].startswith("whsec_")
    assert client.get(f"/jobs/{job_id}", headers=write).status_code == 200


def test_the_key_cache_keeps_the_scope_with_the_tenant(
    client: TestClient, select_body: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "_key_cache", KeyCache(60.0))
    with session_scope() as s:
        created = create_key(s, f"t-{uuid.uuid4().hex[:8]}", scope="read")
    assert created.scope is KeyScope.READ
    assert client.get("/jobs", headers=_bearer(created.key)).status_code == 200
    cached = keys.key_cache().get(hash_key(created.key))
    assert cached == KeyAccess(created.tenant_id, KeyScope.READ)

    def no_lookup(key_hash: str) -> KeyAccess | None:
        raise AssertionError("the cached answer should have been used")

    monkeypatch.setattr(deps, "_lookup", no_lookup)
    r = client.post("/jobs", json=select_body, headers=_bearer(created.key))
    _assert_forbidden(r, "POST", "/jobs")
    assert client.get("/jobs", headers=_bearer(created.key)).status_code == 200


@pytest.mark.parametrize("scope", ["admin", "Read", "", "read "])
def test_a_scope_other_than_read_or_write_is_refused_at_creation(
    service_db: str, scope: str
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ValidationFailed) as refused, session_scope() as s:
        create_key(s, tenant, scope=scope)
    assert refused.value.field == "scope"
    assert refused.value.detail == f"scope must be 'read' or 'write', not {scope!r}"
    with session_scope() as s:
        assert list_keys(s, tenant) == []
    with session_scope() as s:
        assert create_key(s, tenant).scope is KeyScope.WRITE  # the default
        assert [k.scope for k in list_keys(s, tenant)] == ["write"]
