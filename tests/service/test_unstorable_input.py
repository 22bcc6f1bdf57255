"""Input the database cannot store (NUL, lone surrogates), large first records, impossible
top_k values and overload: each a clear answer (422 naming the field, 404, 503), never a 500."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.db import session_scope
from service.models import Job

PROBLEM = "application/problem+json"


def _job_count() -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def _field(r: Any) -> str:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    return str(r.json()["errors"][0]["field"])


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"])
def test_unstorable_strings_in_the_body_are_422(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any], bad: str
) -> None:
    before = _job_count()
    cases = {
        "dataset_uri": {"dataset_uri": select_body["dataset_uri"] + bad},
        "target_uri": {"target_uri": select_body["target_uri"] + bad},
        "target_uri ": {"target_uri": [select_body["target_uri"], bad]},
        "target_model": {"target_model": bad},
        "metadata.team": {"metadata": {"team": bad}},
        "metadata.k\x00.[key]": {"metadata": {"k\x00": "v"}},
        "selection.quota_field": {"selection": {"top_k": 2, "quota_field": bad, "quota": 0.5}},
        "proxy.proxy_id": {"proxy": {"proxy_id": bad}},
    }
    for field, change in cases.items():
        content = json.dumps(select_body | change)  # json escapes NUL and surrogates
        r = client.post(
            "/jobs", content=content, headers=auth | {"Content-Type": "application/json"}
        )
        assert _field(r) == field.strip(), (field, r.json())
    assert _job_count() == before


def test_unstorable_strings_in_the_url_are_422_or_404(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any]
) -> None:
    job_id = client.post("/jobs", json=select_body, headers=auth).json()["id"]
    for path in (
        "/jobs/a%00b",
        f"/jobs/{job_id}%00",
        "/jobs/a%00b/scores",
        "/jobs/a%00b/events",
        "/jobs/a%00b/subset",
        "/jobs/%ED%A0%80",  # UTF-8 of a lone surrogate: not valid UTF-8
        "/proxies/a%00b",
    ):
        r = client.get(path, headers=auth)
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert r.headers["content-type"] == PROBLEM
    assert client.post("/jobs/a%00b/cancel", headers=auth).status_code == 404
    cursor = base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|a\x00b").decode()
    for url, field in [
        (f"/jobs?cursor={cursor}", "cursor"),
        ("/jobs?cursor=%00", "cursor"),
        (f"/proxies?cursor={cursor}", "cursor"),
        ("/jobs?metadata.team=nl%00p", "metadata.team"),
        ("/jobs?metadata.te%00am=nlp", "metadata"),
    ]:
        assert _field(client.get(url, headers=auth)) == field, url
    r = client.post("/jobs", json=select_body, headers=auth | {"Idempotency-Key": "k\x00"})
    assert r.status_code in (400, 422), r.text  # the HTTP layer may refuse it first
    assert client.get(f"/jobs/{job_id}", headers=auth).status_code == 200  # nothing lost


def test_a_large_first_record_is_read_whole(
    client: TestClient,
    auth: dict[str, str],
    select_body: dict[str, Any],
    data_file: Callable[..., str],
) -> None:
    big = {"prompt": "x" * (3 << 20), "completion": "y"}  # a 3 MiB first line
    rows = [big, {"prompt": "q", "completion": "a"}]
    r = client.post("/jobs", json=select_body | {"dataset_uri": data_file(rows)}, headers=auth)
    assert r.status_code == 202, r.text
    broken = data_file(json.dumps(big)[:-1] + "\n")  # the same line, cut short
    r = client.post("/jobs", json=select_body | {"dataset_uri": broken}, headers=auth)
    assert _field(r) == "dataset_uri" and "line 1 is not JSON" in r.json()["detail"]


def test_a_first_record_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    from service.datasets import check_uri
    from service.errors import ValidationFailed
    from service.outbound import OutboundPolicy

    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps({"text": "x" * (3 << 20)}) + "\n")
    kwargs: dict[str, Any] = dict(
        data_roots=[tmp_path], http_timeout_s=1, http_total_timeout_s=1, outbound=OutboundPolicy()
    )
    assert check_uri(path.as_uri(), "dataset_uri", http_max_bytes=4 << 20, **kwargs) == 1
    with pytest.raises(ValidationFailed, match="longer than the limit of 2097152 bytes"):
        check_uri(path.as_uri(), "dataset_uri", http_max_bytes=2 << 20, **kwargs)


def test_top_k_above_the_pool_size_is_422(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any]
) -> None:
    # select_body's pool holds 5 records.
    for top_k in (6, 10**30):
        body = select_body | {"selection": {"top_k": top_k}}
        r = client.post("/jobs", json=body, headers=auth)
        assert _field(r) == "selection.top_k", r.json()
    r = client.post("/jobs", json=select_body | {"selection": {"top_k": 5}}, headers=auth)
    assert r.status_code == 202, r.text


def test_overload_is_shed_with_503_and_health_still_answers(
    client: TestClient, auth: dict[str, str]
) -> None:
    from service.limits import InflightLimit

    limiter = client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(limiter, InflightLimit):
        limiter = limiter.app
    limiter.inflight = limiter.limit  # as though that many requests were in progress
    try:
        r = client.get("/jobs", headers=auth)
        assert r.status_code == 503 and r.headers["content-type"] == PROBLEM
        assert r.json()["code"] == "overloaded" and r.headers["retry-after"] == "1"
        assert client.get("/healthz").status_code == 200
    finally:
        limiter.inflight = 0
    assert client.get("/jobs", headers=auth).status_code == 200
