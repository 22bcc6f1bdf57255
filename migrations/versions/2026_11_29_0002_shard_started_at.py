"""Shards record when a worker took them (orphan detection tells queued from abandoned);
the unused per-shard ``scored`` counter goes (scores are counted from the scores table).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 12:04:08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite rebuilds the table (it cannot drop a column in place everywhere).
    with op.batch_alter_table("job_shards", schema=None) as batch_op:
        batch_op.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_column("scored")


def downgrade() -> None:
    with op.batch_alter_table("job_shards", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scored", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch_op.drop_column("started_at")
