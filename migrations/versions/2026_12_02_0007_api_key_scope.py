"""API keys carry a scope: ``read`` (GET and HEAD only) or ``write`` (everything). Keys made
before keep doing everything: the column's server default gives them ``write``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SCOPES = ("read", "write")


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scope", sa.String(length=16), server_default="write", nullable=False)
        )
        batch_op.create_check_constraint(
            op.f("ck_api_keys_keyscope"), sa.column("scope").in_(_SCOPES)
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_api_keys_keyscope"), type_="check")
        batch_op.drop_column("scope")
