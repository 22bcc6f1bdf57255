"""All SQL of the estimates domain. Functions flush; the caller's boundary commits."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Calibration


def add(session: Session, row: Calibration) -> None:
    session.add(row)
    session.flush()


def latest(session: Session, model: str, limit: int = 5) -> list[Calibration]:
    """The model's most recent calibrations, newest first."""
    q = (
        select(Calibration)
        .where(Calibration.model == model)
        .order_by(Calibration.created_at.desc(), Calibration.id)
        .limit(limit)
    )
    return list(session.scalars(q))
