"""Cost estimates: the rates each finished select job measured (per model, device and dtype).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 12:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calibrations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("model", sa.String(length=500), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("pool_bytes", sa.BigInteger(), nullable=False),
        sa.Column("tokens_per_byte", sa.Float(), nullable=False),
        sa.Column("rates", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_calibrations_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calibrations")),
    )
    op.create_index("ix_calibrations_model_created", "calibrations", ["model", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_calibrations_model_created", table_name="calibrations")
    op.drop_table("calibrations")
