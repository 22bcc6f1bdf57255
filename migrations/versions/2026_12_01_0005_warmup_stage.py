"""Jobs may be in the ``warmup`` stage (the warm-up fine-tune of a select job that asks for
one): the stage column's check constraint takes the new value.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = ("loading", "compressing", "aligning", "scoring", "ranking")
_AFTER = ("loading", "warmup", "compressing", "aligning", "scoring", "ranking")


def _stages(values: tuple[str, ...]) -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_jobstage"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_jobstage"), sa.column("stage").in_(values))


def upgrade() -> None:
    _stages(_AFTER)


def downgrade() -> None:
    op.execute("UPDATE jobs SET stage = 'loading' WHERE stage = 'warmup'")
    _stages(_BEFORE)
