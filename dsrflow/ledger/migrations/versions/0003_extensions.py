"""Deadline extensions: the extended due date, when the subject was told, and why.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a table in place beyond adding plain columns, and
    # Alembic's batch mode does the right thing on both SQLite and PostgreSQL.
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("extended_due_at", TS))
        batch.add_column(sa.Column("extension_notice_at", TS))
        batch.add_column(sa.Column("extension_reason", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("extension_reason")
        batch.drop_column("extension_notice_at")
        batch.drop_column("extended_due_at")
