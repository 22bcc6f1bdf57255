"""All SQL of the jobs domain. Functions flush; the caller's boundary commits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from service.models import (
    Job,
    JobEvent,
    JobLabel,
    JobShard,
    JobStatus,
    Score,
    ShardStatus,
)
from service.models.base import utcnow


def get_job(session: Session, tenant_id: str, job_id: str) -> Job | None:
    """The tenant's job, or None (another tenant's id looks missing)."""
    return session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))


# Built once: the hot path pays neither the statement's construction nor its cache key.
_JOB_WITH_LABELS = (
    select(Job.__table__, JobLabel.key.label("label_key"), JobLabel.value)
    .outerjoin(JobLabel, JobLabel.job_id == Job.id)
    .where(Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id"))
)


def read_job_row(
    conn: Connection, tenant_id: str, job_id: str
) -> tuple[Row[Any], dict[str, str]] | None:
    """The tenant's job row and its labels in one Core query (one round trip, no ORM objects):
    the hot path of GET /jobs/{id}. None when the tenant has no such job."""
    rows = conn.execute(_JOB_WITH_LABELS, {"job_id": job_id, "tenant_id": tenant_id}).all()
    if not rows:
        return None
    labels = {r.label_key: r.value for r in rows if r.label_key is not None}
    return rows[0], labels


def get_job_any_tenant(session: Session, job_id: str) -> Job | None:
    """For the worker, which acts on ids the API already checked."""
    return session.get(Job, job_id, populate_existing=True)


def lock_job(session: Session, job_id: str) -> Job | None:
    """The row, locked until the transaction ends (SQLite: BEGIN IMMEDIATE locks the database)."""
    return session.scalar(select(Job).where(Job.id == job_id).with_for_update())


def find_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Job | None:
    """The tenant's job created with this Idempotency-Key, if any."""
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def add_job(session: Session, job: Job, labels: dict[str, str]) -> Job:
    """Insert a job and its metadata labels."""
    session.add(job)
    session.flush()
    session.add_all(JobLabel(job_id=job.id, key=k, value=v) for k, v in labels.items())
    session.flush()
    return job


def labels_of(session: Session, job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Metadata labels of each job id, as dicts."""
    out: dict[str, dict[str, str]] = {j: {} for j in job_ids}
    if job_ids:
        for row in session.scalars(select(JobLabel).where(JobLabel.job_id.in_(job_ids))):
            out[row.job_id][row.key] = row.value
    return out


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    statuses: Sequence[JobStatus],
    labels: dict[str, str],
    cursor: tuple[datetime, str] | None,
    limit: int,
) -> list[Job]:
    """Newest first; keyset pagination on (created_at, id)."""
    q = select(Job).where(Job.tenant_id == tenant_id)
    if statuses:
        q = q.where(Job.status.in_(statuses))
    for key, value in labels.items():
        q = q.where(
            select(JobLabel.job_id)
            .where(JobLabel.job_id == Job.id, JobLabel.key == key, JobLabel.value == value)
            .exists()
        )
    if cursor is not None:
        at, row_id = cursor
        q = q.where(or_(Job.created_at < at, and_(Job.created_at == at, Job.id < row_id)))
    q = q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return list(session.scalars(q))


def add_event(
    session: Session,
    job_id: str,
    type_: str,
    message: str = "",
    *,
    stage: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Append an entry to a job's event log."""
    session.add(JobEvent(job_id=job_id, type=type_, stage=stage, message=message, data=data))
    session.flush()


def list_events(session: Session, job_id: str, *, after: int, limit: int) -> list[JobEvent]:
    """A job's events with ids above ``after``, oldest first."""
    q = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after)
        .order_by(JobEvent.id)
        .limit(limit)
    )
    return list(session.scalars(q))


def upsert_scores(session: Session, job_id: str, rows: Iterable[tuple[int, str, float]]) -> int:
    """Insert or overwrite (job_id, sample_index) -> score: a redelivered shard rewrites its own
    rows instead of duplicating them."""
    values = [
        {"job_id": job_id, "sample_index": i, "sample_id": sid, "score": s} for i, sid, s in rows
    ]
    if not values:
        return 0
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(Score).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[Score.job_id, Score.sample_index],
        set_={"sample_id": stmt.excluded.sample_id, "score": stmt.excluded.score},
    )
    session.execute(stmt)
    return len(values)


def list_scores(session: Session, job_id: str, *, after: int, limit: int) -> list[Score]:
    """A job's scores with sample index above ``after``, by index."""
    q = (
        select(Score)
        .where(Score.job_id == job_id, Score.sample_index > after)
        .order_by(Score.sample_index)
        .limit(limit)
    )
    return list(session.scalars(q))


def scores_by_rank(
    session: Session,
    job_id: str,
    *,
    after: tuple[float, int] | None = None,
    offset: int = 0,
    limit: int,
) -> list[Score]:
    """A job's scores best first (score descending, ties by ascending index: the order the
    ranking uses), after the key ``(score, index)`` of the last row seen, or from ``offset``."""
    q = select(Score).where(Score.job_id == job_id)
    if after is not None:
        score, index = after
        q = q.where(
            or_(Score.score < score, and_(Score.score == score, Score.sample_index > index))
        )
    q = q.order_by(Score.score.desc(), Score.sample_index).offset(offset).limit(limit)
    return list(session.scalars(q))


def count_scores(session: Session, job_id: str) -> int:
    """How many samples of a job have a score."""
    return int(session.scalar(select(func.count()).where(Score.job_id == job_id)) or 0)


def all_scores(session: Session, job_id: str) -> dict[int, float]:
    """Every score of a job: sample index -> score."""
    rows = session.execute(
        select(Score.sample_index, Score.score).where(Score.job_id == job_id)
    ).all()
    return {int(i): float(s) for i, s in rows}


def create_shards(session: Session, job_id: str, bounds: Sequence[tuple[int, int]]) -> None:
    """Idempotent: a redelivered planning step finds the shards already there."""
    existing = {
        s.shard_index for s in session.scalars(select(JobShard).where(JobShard.job_id == job_id))
    }
    now = utcnow()
    session.add_all(
        JobShard(job_id=job_id, shard_index=k, start=a, stop=b, queued_at=now)
        for k, (a, b) in enumerate(bounds)
        if k not in existing
    )
    session.flush()


def get_shard(session: Session, job_id: str, index: int) -> JobShard | None:
    """One shard of a job, or None."""
    return session.get(JobShard, (job_id, index))


def shards_of(session: Session, job_id: str) -> list[JobShard]:
    """A job's shards by index."""
    q = select(JobShard).where(JobShard.job_id == job_id).order_by(JobShard.shard_index)
    return list(session.scalars(q))


def shards_pending(session: Session, job_id: str) -> int:
    """How many of a job's shards have not settled."""
    q = select(func.count()).where(
        JobShard.job_id == job_id, JobShard.status == ShardStatus.PENDING
    )
    return int(session.scalar(q) or 0)


def stranded_candidates(session: Session, stale_before: datetime) -> list[str]:
    """Unfinished jobs that may hold stranded work: untouched since ``stale_before``, or with
    a pending shard whose claimant's heartbeat, or whose last message, is older than that.
    The reconciler looks at each under its lock (state.recover)."""
    shard = select(JobShard.job_id).where(
        JobShard.job_id == Job.id,
        JobShard.status == ShardStatus.PENDING,
        or_(
            and_(
                JobShard.claim.is_not(None),
                or_(JobShard.heartbeat_at.is_(None), JobShard.heartbeat_at < stale_before),
            ),
            and_(
                JobShard.claim.is_(None),
                or_(JobShard.queued_at.is_(None), JobShard.queued_at < stale_before),
            ),
        ),
    )
    q = select(Job.id).where(
        Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)),
        or_(Job.updated_at < stale_before, shard.exists()),
    )
    return list(session.scalars(q.order_by(Job.created_at)))


def touch(job: Job) -> None:
    """Beat the job's heartbeat."""
    job.updated_at = utcnow()
