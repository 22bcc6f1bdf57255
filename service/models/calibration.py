"""Rates measured on this deployment: one row per finished select job, for cost estimates."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, new_id, utcnow
from service.models.types import UTCDateTime


class Calibration(Base):
    """What one finished job measured: its pool's size and tokens, and seconds per unit of work
    of each stage, on the worker's device and dtype. ``dry_run`` estimates read the latest rows
    of a model."""

    __tablename__ = "calibrations"
    __table_args__ = (Index("ix_calibrations_model_created", "model", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), default=None
    )
    model: Mapped[str] = mapped_column(String(500))
    device: Mapped[str] = mapped_column(String(64))
    dtype: Mapped[str] = mapped_column(String(16))
    samples: Mapped[int] = mapped_column(Integer)
    pool_bytes: Mapped[int] = mapped_column(BigInteger)
    tokens_per_byte: Mapped[float] = mapped_column(Float)
    # Seconds per unit: proxy_s_per_probe_token, scoring_s_per_token, ranking_s_per_sample,
    # warmup_s_per_token (each present when the job ran that stage).
    rates: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
