"""Partner requests: one per request × partner, written before the partner is asked.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "partner_requests",
        sa.Column("request_id", sa.String(36), sa.ForeignKey("requests.id"), primary_key=True),
        sa.Column("system", sa.String(64), primary_key=True),
        sa.Column("subject_request_id", sa.String(36), nullable=False, unique=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("regulation_sent", sa.String(16)),
        sa.Column("controller_id", sa.String(128)),
        sa.Column("expected_completion_at", TS),
        sa.Column("confirmed_by", sa.String(128)),
        sa.Column("reference", sa.String(128)),
        sa.Column("error", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("partner_requests")
