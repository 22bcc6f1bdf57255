"""Job steps on a tiny real model: select end to end (sharded; by top_k and by token budget),
proxy reuse, artifacts under a URL root, cancel, failure, redelivery (recovery: test_recovery.py)."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from fsspec.implementations.memory import MemoryFileSystem
from sqlalchemy import func, select

from service.config import get_settings
from service.db import session_scope
from service.jobs import repository
from service.models import JobShard, Proxy
from service.models.base import utcnow
from service.queue import TASK_RANK_JOB, TASK_SCORE_SHARD
from tests.service.kit import service_environ
from tests.worker.conftest import FAST_PROXY, FAST_SCORER, POOL, read_jsonl
from tests.worker.inline import InlineQueue
from worker.tasks import steps


@pytest.fixture
def small_shards() -> Iterator[None]:
    """Shards of 4 samples: the 6-record pool splits into two."""
    settings = get_settings()
    old = settings.shard_size
    settings.shard_size = 4
    yield
    settings.shard_size = old


def submit(client: TestClient, auth: dict[str, str], body: dict[str, Any]) -> str:
    r = client.post("/jobs", json=body, headers=auth)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def stages(client: TestClient, auth: dict[str, str], job_id: str) -> list[str]:
    events = client.get(f"/jobs/{job_id}/events", headers=auth).json()["items"]
    return [e["message"] for e in events if e["type"] == "stage"]


def proxy_count() -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(Proxy)) or 0)


def test_select_runs_sharded_and_ranks(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    small_shards: None,
) -> None:
    job_id = submit(client, auth, job_body())
    queue = InlineQueue()
    queue.run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == {"done": 6, "total": 6, "unit": "samples"} and job["partial"] is False
    assert queue.names().count(TASK_SCORE_SHARD) == 2 and queue.names().count(TASK_RANK_JOB) == 1
    assert stages(client, auth, job_id)[0] == "loading"
    assert {"compressing", "scoring", "ranking"} <= set(stages(client, auth, job_id))
    scores = client.get(f"/jobs/{job_id}/scores", headers=auth).json()
    assert scores["count"] == 6 and scores["partial"] is False
    by_index = {s["index"]: s["score"] for s in scores["items"]}
    subset = read_jsonl(client.get(f"/jobs/{job_id}/subset", headers=auth).text)
    best = sorted(by_index, key=lambda i: (-by_index[i], i))[:3]
    assert [r["rank"] for r in subset] == [1, 2, 3]
    assert [r["id"] for r in subset] == [POOL[i]["id"] for i in best]
    for r, i in zip(subset, best, strict=True):
        assert r["score"] == pytest.approx(by_index[i])
        assert {k: r[k] for k in POOL[i]} == POOL[i]  # original fields kept
    result = job["result"]
    assert result["selected"] == 3 and result["pool_size"] == 6
    proxy = client.get(f"/proxies/{result['proxy_id']}", headers=auth).json()
    assert proxy["job_id"] == job_id and proxy["manifest"]["method"] == "ipsvd"


def test_select_by_token_budget(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    tiny_model_dir: str,
    small_shards: None,
) -> None:
    from worker.engine.models import load_model
    from worker.engine.pipeline import token_counts

    body = job_body()
    pool = Path(urlsplit(body["dataset_uri"]).path)
    # Tokens per record as the job counts them: the model's tokenizer, the scorer's max_length.
    tokens = token_counts(load_model(tiny_model_dir).tokenizer, pool, FAST_SCORER["max_length"])
    budget = sum(tokens.values()) // 2  # room for some records, not all
    job_id = submit(client, auth, body | {"selection": {"token_budget": budget}})
    InlineQueue().run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["selection"]["token_budget"] == budget
    scores = client.get(f"/jobs/{job_id}/scores", headers=auth).json()["items"]
    by_index = {s["index"]: s["score"] for s in scores}
    subset = read_jsonl(client.get(f"/jobs/{job_id}/subset", headers=auth).text)
    index_of = {r["id"]: i for i, r in enumerate(POOL)}
    chosen = [index_of[r["id"]] for r in subset]
    assert 0 < len(chosen) < len(POOL) and job["result"]["selected"] == len(chosen)
    assert sum(tokens[i] for i in chosen) <= budget
    # The top of the ranking: best first, and a better record is left out only when its tokens
    # no longer fit the budget.
    ranking = sorted(by_index, key=lambda i: (-by_index[i], i))
    expected, spent = [], 0
    for i in ranking:
        if spent + tokens[i] <= budget:
            expected.append(i)
            spent += tokens[i]
    assert chosen == expected and chosen[0] == ranking[0]
    assert [r["rank"] for r in subset] == list(range(1, len(chosen) + 1))
    assert [r["score"] for r in subset] == pytest.approx([by_index[i] for i in chosen])


def test_influence_job_is_one_shard_with_the_whole_pools_curvature(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    tiny_model_dir: str,
    small_shards: None,
) -> None:
    from worker.engine.pipeline import iter_scores
    from worker.tasks.configs import score_config

    body = job_body()
    scorer = dict(FAST_SCORER, method="influence")
    job_id = submit(client, auth, body | {"scorer": scorer})
    queue = InlineQueue()
    queue.run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    # 6 records with shards of 4 would be two shards for tracin; influence takes the whole pool.
    assert queue.names().count(TASK_SCORE_SHARD) == 1
    got = {
        s["index"]: s["score"]
        for s in client.get(f"/jobs/{job_id}/scores", headers=auth).json()["items"]
    }
    with session_scope() as s:
        proxy_path = s.get(Proxy, job["result"]["proxy_id"]).path  # type: ignore[union-attr]
    whole: dict[int, float] = {}
    for b in iter_scores(
        tiny_model_dir,
        Path(urlsplit(body["dataset_uri"]).path),
        [Path(urlsplit(body["target_uri"]).path)],
        proxy=Path(proxy_path),
        config=score_config(scorer),
    ):
        whole.update(zip(b.indices, b.scores, strict=True))
    assert got == pytest.approx(whole, rel=1e-4, abs=1e-6)


def test_proxy_build_then_select_reuses_it(
    client: TestClient, auth: dict[str, str], job_body: Callable[..., dict[str, Any]]
) -> None:
    build_id = submit(client, auth, job_body("proxy_build"))
    InlineQueue().run(build_id)
    built = client.get(f"/jobs/{build_id}", headers=auth).json()
    assert built["status"] == "succeeded", built["error"]
    proxy_id = built["result"]["proxy_id"]
    assert [p["id"] for p in client.get("/proxies", headers=auth).json()["items"]] == [proxy_id]
    events = client.get(f"/jobs/{build_id}/events", headers=auth).json()["items"]
    (built_event,) = [e for e in events if e["message"] == "proxy built"]
    assert built_event["data"]["probe_oom_halvings"] == 0  # nothing ran out of memory
    proxies_before = proxy_count()
    body = job_body()
    body["proxy"] = {"proxy_id": proxy_id}
    job_id = submit(client, auth, body)
    InlineQueue().run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["proxy_id"] == proxy_id == job["proxy_id"]
    assert proxy_count() == proxies_before  # no second build
    assert "compressing" not in stages(client, auth, job_id)
    artifacts = get_settings().artifacts  # a folder root: the proxy is used where it was built
    with session_scope() as s:
        row = s.get(Proxy, proxy_id)
        assert row is not None and row.path == str(artifacts.workspace("proxies", proxy_id))
    assert not artifacts.workspace("cache").exists()


def test_the_fidelity_report_reaches_events_result_and_proxy_read(
    client: TestClient, auth: dict[str, str], job_body: Callable[..., dict[str, Any]]
) -> None:
    # 6 pool records, 4 of them probes: 2 left to calibrate on, against the job's 1 target.
    job_id = submit(client, auth, job_body())
    InlineQueue().run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    figures = job["result"]["fidelity"]
    assert figures["status"] == "measured" and figures["target_source"] == "job"
    assert (figures["calibration_records"], figures["target_records"]) == (2, 1)
    assert figures["spearman"] in (-1.0, 1.0) and figures["proxy_seconds_per_sample"] > 0
    events = client.get(f"/jobs/{job_id}/events", headers=auth).json()["items"]
    (event,) = [e for e in events if e["message"] == "proxy fidelity"]
    assert event["data"] == {"proxy_id": job["proxy_id"]} | figures
    proxy = client.get(f"/proxies/{job['proxy_id']}", headers=auth).json()
    assert proxy["fidelity"] == proxy["manifest"]["fidelity"]
    calibration = set(proxy["fidelity"]["calibration"]["record_ids"])
    assert len(calibration) == 2 and not calibration & set(proxy["manifest"]["probe"]["record_ids"])
    # A proxy_build job has no target set: the pool's 2 spare records split 1 + 1, too few.
    build_id = submit(client, auth, job_body("proxy_build"))
    InlineQueue().run(build_id)
    built = client.get(f"/jobs/{build_id}", headers=auth).json()
    assert built["result"]["fidelity"]["status"] == "skipped"
    assert "too few records" in built["result"]["fidelity"]["reason"]
    # fidelity_samples 0: no report anywhere.
    off_id = submit(client, auth, job_body(proxy=FAST_PROXY | {"fidelity_samples": 0}))
    InlineQueue().run(off_id)
    off = client.get(f"/jobs/{off_id}", headers=auth).json()
    assert off["status"] == "succeeded" and off["result"]["fidelity"] is None
    assert client.get(f"/proxies/{off['proxy_id']}", headers=auth).json()["fidelity"] is None
    events = client.get(f"/jobs/{off_id}/events", headers=auth).json()["items"]
    assert not [e for e in events if e["message"] == "proxy fidelity"]


@pytest.fixture
def memory_artifacts(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The artifact root as a memory:// URL; the worker's local folder under tmp_path."""
    root = f"memory://iprox-{uuid.uuid4().hex[:8]}/artifacts"
    work = tmp_path / "work"
    with service_environ({"IPROX_ARTIFACT_ROOT": root, "IPROX_WORK_DIR": str(work)}):
        yield root, work
    MemoryFileSystem().rm(root, recursive=True)


def test_artifacts_under_a_url_root(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    memory_artifacts: tuple[str, Path],
) -> None:
    root, work = memory_artifacts
    store = MemoryFileSystem()
    build_id = submit(client, auth, job_body("proxy_build"))
    InlineQueue().run(build_id)
    built = client.get(f"/jobs/{build_id}", headers=auth).json()
    assert built["status"] == "succeeded", built["error"]
    proxy_id = built["result"]["proxy_id"]
    kept = f"{root}/proxies/{proxy_id}"
    with session_scope() as s:
        row = s.get(Proxy, proxy_id)
        assert row is not None and row.path == kept  # the database records the URL
    assert store.isfile(f"{kept}/proxy.json")

    shutil.rmtree(work)  # a worker that has nothing local, as another machine would
    body = job_body()
    body["proxy"] = {"proxy_id": proxy_id}
    job_id = submit(client, auth, body)
    InlineQueue().run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    cached = work / "cache" / "proxies" / proxy_id  # downloaded before scoring
    assert (cached / "proxy.json").read_bytes() == store.cat_file(f"{kept}/proxy.json")
    assert not (work / "proxies").exists()  # not rebuilt

    uploaded = store.cat_file(f"{root}/jobs/{job_id}/subset.jsonl")
    assert hashlib.sha256(uploaded).hexdigest() == job["result"]["subset_sha256"]
    (work / "jobs" / job_id / "subset.jsonl").unlink()  # the API streams the uploaded copy
    subset = read_jsonl(client.get(f"/jobs/{job_id}/subset", headers=auth).text)
    assert [r["rank"] for r in subset] == [1, 2, 3] and subset == read_jsonl(uploaded.decode())


def test_cancel_mid_scoring_keeps_partial_scores(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker.engine.pipeline as pipeline

    job_id = submit(client, auth, job_body())
    real_iter_scores = pipeline.iter_scores
    yielded: list[int] = []

    def cancel_after_first_batch(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for batch in real_iter_scores(*args, **kwargs):
            if yielded:  # batch 1 is persisted and committed: the user cancels now
                assert client.post(f"/jobs/{job_id}/cancel", headers=auth).status_code == 202
            yielded.append(len(batch.indices))
            yield batch

    monkeypatch.setattr(pipeline, "iter_scores", cancel_after_first_batch)
    InlineQueue().run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "cancelled" and job["partial"] is True
    assert len(yielded) == 2  # the batch in flight is kept, then the shard stops
    scores = client.get(f"/jobs/{job_id}/scores", headers=auth).json()
    assert scores["partial"] is True and scores["count"] == sum(yielded) < len(POOL)
    assert job["result"]["scored"] == sum(yielded)
    assert client.get(f"/jobs/{job_id}/subset", headers=auth).status_code == 409


def test_corrupt_dataset_fails_with_a_code(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    data_file: Callable[..., str],
) -> None:
    # The first record is fine (so the API accepts it); the third line is not JSON.
    corrupt = data_file('{"text": "fine"}\n{"text": "fine too"}\n{"text": broken\n')
    job_id = submit(client, auth, job_body(dataset_uri=corrupt))
    InlineQueue().run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "data_format" and ":3" in job["error"]["message"]
    assert job["finished_at"] is not None


def test_proj_dim_below_the_models_blocks_fails_as_config_naming_the_field(
    client: TestClient, auth: dict[str, str], job_body: Callable[..., dict[str, Any]]
) -> None:
    # 8 passes the API (one feature per layer suffix) but the tiny proxy has more gradient
    # blocks than that: the job fails with a code and the request's field, not as internal.
    scorer = dict(FAST_SCORER, features="projected", proj_dim=8)
    job_id = submit(client, auth, job_body(scorer=scorer))
    InlineQueue().run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "config", job["error"]
    assert job["error"]["message"].startswith("scorer.proj_dim must be at least ")


def test_redelivered_steps_do_not_duplicate(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    small_shards: None,
) -> None:
    job_id = submit(client, auth, job_body())
    queue = InlineQueue()
    queue.run(job_id)
    with session_scope() as s:
        first = repository.all_scores(s, job_id)
        shards = list(s.scalars(select(JobShard).where(JobShard.job_id == job_id)))
    # Messages delivered again after success change nothing.
    settings = get_settings()
    steps.run_job(job_id, settings, queue)
    steps.score_shard(job_id, 0, settings, queue)
    steps.rank_job(job_id, settings)
    queue.drain()
    with session_scope() as s:
        assert repository.all_scores(s, job_id) == first
        assert repository.count_scores(s, job_id) == len(POOL) == len(first)
    assert len(shards) == 2


def test_a_shard_delivered_twice_runs_once(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    small_shards: None,
) -> None:
    job_id = submit(client, auth, job_body())
    queue = InlineQueue()
    settings = get_settings()
    with steps.job_guard(job_id):
        steps.run_job(job_id, settings, queue)  # plans two shards; their messages wait
    assert queue.names().count(TASK_SCORE_SHARD) == 2
    with session_scope() as s:
        shard = repository.get_shard(s, job_id, 0)
        assert shard is not None
        # A first delivery of shard 0 is at work elsewhere (its heartbeat is fresh).
        shard.claim, shard.heartbeat_at = "elsewhere", utcnow()
    steps.score_shard(job_id, 0, settings, queue)
    with session_scope() as s:
        assert repository.count_scores(s, job_id) == 0  # the duplicate did nothing
        shard = repository.get_shard(s, job_id, 0)
        assert shard is not None and shard.status.value == "pending"


def test_a_batch_halved_for_memory_is_a_job_event(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.engine.scoring.exact import ExactScorer
    from worker.engine.scoring.features import _OOM

    real = ExactScorer.__call__

    def at_most_two(self: Any, batch: dict[str, Any], vectors: Any) -> Any:
        if int(batch["attention_mask"].shape[0]) > 2:
            raise _OOM[0]("simulated: CUDA out of memory")
        return real(self, batch, vectors)

    monkeypatch.setattr(ExactScorer, "__call__", at_most_two)
    body = job_body()
    job_id = submit(client, auth, body | {"scorer": dict(body["scorer"], batch_size=4)})
    InlineQueue().run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    events = client.get(f"/jobs/{job_id}/events", headers=auth).json()["items"]
    halved = [e["data"] for e in events if e["message"] == "batch halved: out of memory"]
    assert halved and halved[0] == {"from": 4, "to": 2}
