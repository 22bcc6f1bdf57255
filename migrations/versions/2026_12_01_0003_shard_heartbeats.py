"""Recovery bookkeeping: shards heartbeat every batch and carry the claim of the delivery at
work on them, when they were last queued, and how often they were re-queued; jobs count how
often their own steps (planning, ranking) were re-queued. The reconciler reads these.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_shards", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("attempts")
    with op.batch_alter_table("job_shards", schema=None) as batch_op:
        batch_op.drop_column("attempts")
        batch_op.drop_column("queued_at")
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("claim")
