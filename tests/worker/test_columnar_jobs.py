"""Select jobs on Parquet and save_to_disk pools, and their results as files: the subset as
JSONL, JSON and Parquet, the scores by rank as pages and as JSONL, CSV and Parquet."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from tests.worker.conftest import POOL, read_jsonl
from tests.worker.inline import InlineQueue


def table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """A table with every key of every row as a column (from_pylist takes the first row's)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in keys})


def _run(client: TestClient, auth: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/jobs", json=body, headers=auth)
    assert r.status_code == 202, r.text
    InlineQueue().run(r.json()["id"])
    return dict(client.get(f"/jobs/{r.json()['id']}", headers=auth).json())


def test_a_parquet_pool_selects_and_serves_every_format(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    svc_roots: dict[str, Path],
) -> None:
    path = svc_roots["data"] / f"{uuid.uuid4().hex[:8]}.parquet"
    pq.write_table(table(POOL), path, row_group_size=2)
    job = _run(client, auth, job_body(dataset_uri=path.as_uri()))
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["subset_formats"] == ["jsonl", "parquet"]
    base = f"/jobs/{job['id']}"
    as_jsonl = read_jsonl(client.get(f"{base}/subset", headers=auth).text)
    as_json = client.get(f"{base}/subset?format=json", headers=auth).json()
    r = client.get(f"{base}/subset?format=parquet", headers=auth)
    assert r.headers["content-type"] == "application/vnd.apache.parquet"
    as_parquet = pq.read_table(io.BytesIO(r.content)).to_pylist()
    assert as_jsonl == as_json == as_parquet and len(as_jsonl) == 3
    assert [row["rank"] for row in as_parquet] == [1, 2, 3]
    by_id = {p["id"]: p for p in POOL}
    for row in as_parquet:  # a column the record lacks is null in Parquet and JSON alike
        assert {
            k: v for k, v in row.items() if v is not None and k not in ("rank", "score")
        } == by_id[row["id"]]
    top = client.get(f"{base}/subset?format=parquet&top_k=2", headers=auth)
    assert pq.read_table(io.BytesIO(top.content)).to_pylist() == as_parquet[:2]

    # Scores best first: pages and whole files agree with the ranking.
    by_index = client.get(f"{base}/scores", headers=auth).json()["items"]
    want = sorted(by_index, key=lambda s: (-s["score"], s["index"]))
    pages, query = [], ""
    while True:
        page = client.get(f"{base}/scores?order=rank&limit=4{query}", headers=auth).json()
        pages += page["items"]
        if not page["has_more"]:
            break
        query = f"&cursor={page['next_cursor']}"
    assert [s["index"] for s in pages] == [s["index"] for s in want]
    assert [s["rank"] for s in pages] == list(range(1, 7))
    assert [s["id"] for s in pages[:3]] == [row["id"] for row in as_jsonl]
    lines = read_jsonl(client.get(f"{base}/scores?format=jsonl&order=rank", headers=auth).text)
    assert lines == pages
    text = client.get(f"{base}/scores?format=csv&order=rank", headers=auth).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["rank"]) for r in rows] == list(range(1, 7))
    assert [int(r["index"]) for r in rows] == [s["index"] for s in want]
    pq_scores = client.get(f"{base}/scores?format=parquet", headers=auth)
    plain = [{k: v for k, v in s.items() if k != "rank"} for s in by_index]
    assert pq.read_table(io.BytesIO(pq_scores.content)).to_pylist() == plain


def test_a_save_to_disk_pool_selects(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    svc_roots: dict[str, Path],
) -> None:
    folder = svc_roots["data"] / f"saved-{uuid.uuid4().hex[:8]}"
    datasets.Dataset.from_dict(table(POOL).to_pydict()).save_to_disk(str(folder), num_shards=2)
    job = _run(client, auth, job_body(dataset_uri=folder.as_uri()))
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["pool_size"] == 6


def test_top_k_over_a_parquet_pool_is_a_422(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    svc_roots: dict[str, Path],
) -> None:
    path = svc_roots["data"] / f"{uuid.uuid4().hex[:8]}.parquet"
    pq.write_table(table(POOL), path)
    r = client.post(
        "/jobs", json=job_body(dataset_uri=path.as_uri(), selection={"top_k": 7}), headers=auth
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "selection.top_k"


def test_a_pool_with_its_own_score_field_fails_before_scoring(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    data_file: Callable[..., str],
) -> None:
    pool = [dict(p, score=0.5) if i == 4 else p for i, p in enumerate(POOL)]
    job = _run(client, auth, job_body(dataset_uri=data_file(pool)))
    assert job["status"] == "failed" and job["error"]["code"] == "data_format"
    assert "record 4 (id 'p4') already has field(s) score" in job["error"]["message"]
    assert client.get(f"/jobs/{job['id']}/scores", headers=auth).json()["count"] == 0
    r = client.get(f"/jobs/{job['id']}/subset?format=parquet", headers=auth)
    assert r.status_code == 409
