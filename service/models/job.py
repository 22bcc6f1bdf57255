"""Jobs, their labels, events, scoring shards and per-sample scores."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, new_id, utcnow
from service.models.types import UTCDateTime, checked_enum


class JobKind(enum.StrEnum):
    SELECT = "select"
    PROXY_BUILD = "proxy_build"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobStage(enum.StrEnum):
    LOADING = "loading"
    WARMUP = "warmup"  # a select job's warm-up fine-tune (its request's ``warmup``)
    COMPRESSING = "compressing"
    ALIGNING = "aligning"
    SCORING = "scoring"
    RANKING = "ranking"


class ShardStatus(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    STOPPED = "stopped"


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[JobKind] = mapped_column(checked_enum(JobKind))
    status: Mapped[JobStatus] = mapped_column(checked_enum(JobStatus), default=JobStatus.QUEUED)
    stage: Mapped[JobStage | None] = mapped_column(checked_enum(JobStage), default=None)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    request_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    proxy_id: Mapped[str | None] = mapped_column(
        ForeignKey("proxies.id", ondelete="SET NULL"), default=None
    )
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    partial: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    shards_total: Mapped[int] = mapped_column(Integer, default=0)
    # Times the reconciler re-queued this job's own steps (planning, ranking) after their
    # worker went silent; past IPROX_MAX_RETRIES the job fails.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Touched on every progress report: a heartbeat that tells a live job from an orphan.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class JobLabel(Base):
    """One ``metadata`` entry of a job, as a row so that filtering is portable and indexed."""

    __tablename__ = "job_labels"
    __table_args__ = (Index("ix_job_labels_key_value", "key", "value"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(500))


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    type: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str | None] = mapped_column(String(16), default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class JobShard(Base):
    """A slice ``[start, stop)`` of the pool scored by one task; the last one done ranks."""

    __tablename__ = "job_shards"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    shard_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    start: Mapped[int] = mapped_column(Integer)
    stop: Mapped[int] = mapped_column(Integer)
    status: Mapped[ShardStatus] = mapped_column(
        checked_enum(ShardStatus), default=ShardStatus.PENDING
    )
    # Set when a worker takes the shard.
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # The delivery at work on the shard (its Celery task id, kept across retries); None while
    # the shard waits in the queue. A worker whose claim was taken over stops.
    claim: Mapped[str | None] = mapped_column(String(64), default=None)
    # Beaten by the claimant every batch: a claim without a fresh heartbeat lost its worker.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # When a message for the shard was last sent: an unclaimed shard queued longer ago than
    # the stale window may have lost its message, and is sent again.
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Times the shard was re-queued after its claimant went silent (IPROX_MAX_RETRIES).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class Score(Base):
    """One pool sample's score; the key makes a redelivered shard overwrite, not duplicate."""

    __tablename__ = "scores"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    sample_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[str] = mapped_column(String(255))
    score: Mapped[float] = mapped_column(Float)
