"""Request leases: which run holds a request, and until when; how many times in a row a
partner could not be asked where a request stands.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(64)))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True)))
    op.create_index("ix_requests_lease_owner", "requests", ["lease_owner"])
    with op.batch_alter_table("partner_requests") as batch:
        batch.add_column(sa.Column("poll_failures", sa.Integer, nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("partner_requests") as batch:
        batch.drop_column("poll_failures")
    op.drop_index("ix_requests_lease_owner", "requests")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
