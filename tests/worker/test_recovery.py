"""The reconciler (service/jobs/recovery.py) against real Postgres: what it re-queues, what it
leaves alone, the retry budget, cancelling jobs; then a worker that dies mid-shard and a lost
message, recovered in-process on the tiny model with exactly one score per sample."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.config import get_settings
from service.db import session_scope
from service.jobs import repository
from service.jobs.recovery import reconcile
from service.models import Job, JobShard, JobStage, JobStatus, Score, ShardStatus
from service.models.base import utcnow
from service.queue import TASK_RANK_JOB, TASK_RUN_JOB, TASK_SCORE_SHARD
from tests.worker.conftest import POOL
from tests.worker.inline import InlineQueue
from worker.tasks import steps

OLD = timedelta(hours=1)


class Sent(list[tuple[str, tuple[object, ...]]]):
    def __call__(self, task: str, *args: object) -> None:
        self.append((task, args))


@pytest.fixture
def window() -> Iterator[None]:
    """A stale window of 10 minutes and a budget of 2 re-queues."""
    settings = get_settings()
    saved = settings.shard_stale_after_s, settings.max_retries
    settings.shard_stale_after_s, settings.max_retries = 600, 2
    yield
    settings.shard_stale_after_s, settings.max_retries = saved


def make_job(
    status: JobStatus = JobStatus.RUNNING,
    stage: JobStage | None = None,
    age: timedelta = OLD,
    shards: list[dict[str, Any]] | None = None,
) -> str:
    from service.auth.keys import get_or_create_tenant

    at = utcnow() - age
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "recovery")
        job = Job(tenant_id=tenant.id, kind="select", request={}, request_hash="x")
        s.add(job)
        s.flush()
        job.status, job.stage, job.updated_at = status, stage, at
        for k, fields in enumerate(shards or []):
            s.add(JobShard(job_id=job.id, shard_index=k, start=k, stop=k + 1, **fields))
        return job.id


def reconcile_now() -> Sent:
    sent = Sent()
    reconcile(get_settings(), sent)
    return sent


def job_row(job_id: str) -> Job:
    with session_scope() as s:
        row = s.get(Job, job_id)
        assert row is not None
        return row


def shard_row(job_id: str, k: int) -> JobShard:
    with session_scope() as s:
        row = repository.get_shard(s, job_id, k)
        assert row is not None
        return row


def test_stale_queued_and_planning_jobs_are_sent_again(service_db: str, window: None) -> None:
    queued = make_job(JobStatus.QUEUED)
    fresh_queued = make_job(JobStatus.QUEUED, age=timedelta(seconds=5))
    planning = make_job(JobStatus.RUNNING, JobStage.COMPRESSING)
    fresh_planning = make_job(JobStatus.RUNNING, JobStage.ALIGNING, age=timedelta(seconds=5))
    sent = reconcile_now()
    assert (TASK_RUN_JOB, (queued,)) in sent and (TASK_RUN_JOB, (planning,)) in sent
    assert not {a[0] for _, a in sent} & {fresh_queued, fresh_planning}
    assert job_row(planning).attempts == 1 and job_row(queued).attempts == 0
    assert all(job_id not in {a[0] for _, a in reconcile_now()} for job_id in (queued, planning))


def test_planning_that_keeps_dying_fails_past_the_budget(service_db: str, window: None) -> None:
    planning = make_job(JobStatus.RUNNING, JobStage.LOADING)
    for attempt in (1, 2):
        assert (TASK_RUN_JOB, (planning,)) in reconcile_now()
        assert job_row(planning).attempts == attempt
        with session_scope() as s:
            row = s.get(Job, planning)
            assert row is not None
            row.updated_at = utcnow() - OLD  # its worker died again
    assert (TASK_RUN_JOB, (planning,)) not in reconcile_now()
    row = job_row(planning)
    assert row.status is JobStatus.FAILED and row.error_code == "retries_exhausted"


def test_shards_are_sent_again_by_the_database_state(service_db: str, window: None) -> None:
    old, now = utcnow() - OLD, utcnow()
    job_id = make_job(
        JobStatus.RUNNING,
        JobStage.SCORING,
        age=timedelta(seconds=5),  # other shards are scoring: the job itself is fresh
        shards=[
            {"status": ShardStatus.DONE},
            {"claim": "dead", "started_at": old, "heartbeat_at": old, "queued_at": old},
            {"claim": "alive", "started_at": old, "heartbeat_at": now, "queued_at": old},
            {"queued_at": old},  # its message was lost (or waits behind other work)
            {"queued_at": now},  # just sent
        ],
    )
    sent = reconcile_now()
    assert sorted(a for t, a in sent if t == TASK_SCORE_SHARD) == [(job_id, 1), (job_id, 3)]
    dead, lost, alive = shard_row(job_id, 1), shard_row(job_id, 3), shard_row(job_id, 2)
    assert dead.claim is None and dead.attempts == 1  # released, and counted
    assert lost.attempts == 0 and lost.queued_at is not None and lost.queued_at > old
    assert alive.claim == "alive" and alive.attempts == 0
    assert reconcile_now() == []  # both were just sent: nothing until the window passes again


def test_a_shard_past_the_budget_fails_the_job(service_db: str, window: None) -> None:
    old = utcnow() - OLD
    job_id = make_job(
        JobStatus.RUNNING,
        JobStage.SCORING,
        shards=[{"claim": "dead", "heartbeat_at": old, "attempts": 2}],
    )
    assert reconcile_now() == []
    row = job_row(job_id)
    assert row.status is JobStatus.FAILED and row.error_code == "retries_exhausted"
    assert "shard 0" in (row.error_message or "")


def test_lost_ranking_is_sent_again(service_db: str, window: None) -> None:
    waiting = make_job(JobStatus.RUNNING, JobStage.SCORING, shards=[{"status": ShardStatus.DONE}])
    ranking = make_job(JobStatus.RUNNING, JobStage.RANKING, shards=[{"status": ShardStatus.DONE}])
    sent = reconcile_now()
    assert (TASK_RANK_JOB, (waiting,)) in sent and (TASK_RANK_JOB, (ranking,)) in sent
    assert job_row(waiting).attempts == 0 and job_row(ranking).attempts == 1


def test_stranded_cancelling_jobs_end_cancelled(service_db: str, window: None) -> None:
    old = utcnow() - OLD
    planning = make_job(JobStatus.CANCELLING, JobStage.LOADING)
    scoring = make_job(
        JobStatus.CANCELLING,
        JobStage.SCORING,
        shards=[{"status": ShardStatus.DONE}, {"claim": "dead", "heartbeat_at": old}, {}],
    )
    assert reconcile_now() == []
    for job_id in (planning, scoring):
        row = job_row(job_id)
        assert row.status is JobStatus.CANCELLED and row.partial, job_id
    assert shard_row(scoring, 1).status is ShardStatus.STOPPED


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs (the failure guard catches Exception only)."""


def _submit(client: TestClient, auth: dict[str, str], body: dict[str, Any]) -> str:
    r = client.post("/jobs", json=body, headers=auth)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _score_rows(job_id: str) -> tuple[int, int]:
    with session_scope() as s:
        q = select(func.count(), func.count(func.distinct(Score.sample_index)))
        total, distinct = s.execute(q.where(Score.job_id == job_id)).one()
    return int(total), int(distinct)


def test_a_worker_dying_mid_shard_is_recovered_exactly_once(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker.engine.pipeline as pipeline

    settings = get_settings()
    monkeypatch.setattr(settings, "shard_stale_after_s", 1)
    job_id = _submit(client, auth, job_body())
    real = pipeline.iter_scores
    deaths: list[int] = []

    def dies_after_one_batch(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for n, batch in enumerate(real(*args, **kwargs)):
            if n == 1 and not deaths:
                deaths.append(n)
                raise Killed  # batch 0 is committed; batch 1 never is
            yield batch

    monkeypatch.setattr(pipeline, "iter_scores", dies_after_one_batch)
    queue = InlineQueue()
    with pytest.raises(Killed):
        queue.run(job_id)
    assert job_row(job_id).status is JobStatus.RUNNING
    scored_before = _score_rows(job_id)[0]
    assert 0 < scored_before < len(POOL)
    with session_scope() as s:  # a second later, the dead claim's heartbeat is stale
        shard = repository.get_shard(s, job_id, 0)
        assert shard is not None and shard.claim is not None
        shard.heartbeat_at = utcnow() - timedelta(seconds=5)
    reconcile(settings, queue)
    queue.drain()
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    assert _score_rows(job_id) == (len(POOL), len(POOL))
    assert shard_row(job_id, 0).attempts == 1
    events = client.get(f"/jobs/{job_id}/events", headers=auth).json()["items"]
    assert any(e["type"] == "recovery" and "shard 0" in e["message"] for e in events)


def test_a_lost_shard_message_is_sent_again(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = get_settings()
    monkeypatch.setattr(settings, "shard_size", 4)
    monkeypatch.setattr(settings, "shard_stale_after_s", 1)
    job_id = _submit(client, auth, job_body())
    queue = InlineQueue()
    with steps.job_guard(job_id):
        steps.run_job(job_id, settings, queue)  # plans two shards
    queue.sent.clear()
    queue._todo.clear()  # the broker lost both messages

    def this_job(task_name: str, *args: object) -> None:
        # Other tests' jobs share the database and may look stale at a 1 s window: only this
        # job's messages go to its queue.
        if args and args[0] == job_id:
            queue(task_name, *args)

    def resent() -> list[Any]:
        return sorted(a for _, a in reconcile(settings, this_job) if a[0] == job_id)

    assert resent() == []  # not yet: they were queued just now
    with session_scope() as s:
        for shard in repository.shards_of(s, job_id):
            shard.queued_at = utcnow() - timedelta(seconds=5)
    assert resent() == [(job_id, 0), (job_id, 1)]
    queue.drain()
    assert job_row(job_id).status is JobStatus.SUCCEEDED
    assert _score_rows(job_id) == (len(POOL), len(POOL))


def test_serve_runs_the_reconciler_on_a_timer(service_db: str, window: None) -> None:
    import threading
    import time

    import redis

    from tests.service.kit import REDIS_DB_SERVICE
    from worker.commands.serve import start_reconciler

    def queued() -> int:
        return int(redis.Redis(db=REDIS_DB_SERVICE).llen(get_settings().queue))

    job_id = make_job(JobStatus.QUEUED)  # its run message was lost
    before = queued()
    stop = threading.Event()
    thread = start_reconciler(0.2, stop)
    try:
        deadline = time.monotonic() + 10
        while queued() == before and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert queued() > before and not thread.is_alive()
    with session_scope() as s:
        events = repository.list_events(s, job_id, after=0, limit=10)
    assert [e.message for e in events if e.type == "recovery"] == ["run message sent again"]
