"""Erasure tombstones: what every completed erasure covered (type, scope, systems, when),
so a database restored from a backup can be erased again. The subject is named by the
request's keyed identity tokens, which outlive it; no raw identity is kept.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tombstones",
        sa.Column("request_id", sa.String(36), sa.ForeignKey("requests.id"), primary_key=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("scope", sa.JSON),
        sa.Column("systems", sa.JSON, nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_tombstones_completed_at", "tombstones", ["completed_at"])


def downgrade() -> None:
    op.drop_index("ix_tombstones_completed_at", "tombstones")
    op.drop_table("tombstones")
