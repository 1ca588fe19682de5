"""Legal holds (privacy policy 6.6.3) and what they keep: the holds themselves, the parts of
requests they held back (request x system), the identities kept (encrypted) to finish
those parts once released, and the follow-up requests that do.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "legal_holds",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("request_id", sa.String(36), sa.ForeignKey("requests.id"), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("citation", sa.Text, nullable=False),
        sa.Column("categories", sa.JSON),
        sa.Column("systems", sa.JSON),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True)),
        sa.Column("released_by", sa.String(128)),
        sa.Column("release_reason", sa.Text),
    )
    op.create_index("ix_legal_holds_request", "legal_holds", ["request_id"])
    op.create_table(
        "held_parts",
        sa.Column("request_id", sa.String(36), sa.ForeignKey("requests.id"), primary_key=True),
        sa.Column("system", sa.String(64), primary_key=True),
        sa.Column("hold_ids", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requeued_request_id", sa.String(36)),
        sa.Column("requeued_at", sa.DateTime(timezone=True)),
    )
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("systems", sa.JSON))
        batch.add_column(sa.Column("follows_request_id", sa.String(36)))
        batch.add_column(sa.Column("held_subject_enc", sa.LargeBinary))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("held_subject_enc")
        batch.drop_column("follows_request_id")
        batch.drop_column("systems")
    op.drop_table("held_parts")
    op.drop_index("ix_legal_holds_request", "legal_holds")
    op.drop_table("legal_holds")
