"""The initial ledger: requests, identity tokens, steps, the audit chain.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("ticket_id", sa.String(128)),
        sa.Column("type", sa.String(32)),
        sa.Column("regime", sa.String(16)),
        sa.Column("channel", sa.String(64)),
        sa.Column("scope", sa.JSON),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("verification_method", sa.String(64)),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("verified_at", TS),
        sa.Column("due_at", TS),
        sa.Column("deadline_error", sa.Text),
        sa.Column("completed_at", TS),
        sa.Column("subject_enc", sa.LargeBinary),
        sa.Column("pseudonym_key_enc", sa.LargeBinary),
        sa.Column("datamap_version", sa.String(64)),
        sa.Column("policy_version", sa.String(64)),
        sa.Column("flow_run_id", sa.String(36)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index(
        "uq_requests_ticket",
        "requests",
        ["ticket_id"],
        unique=True,
        sqlite_where=sa.text("status != 'rejected'"),
        postgresql_where=sa.text("status != 'rejected'"),
    )
    op.create_index("ix_requests_status", "requests", ["status"])
    op.create_table(
        "identity_tokens",
        sa.Column("request_id", sa.String(36), sa.ForeignKey("requests.id"), primary_key=True),
        sa.Column("type", sa.String(32), primary_key=True),
        sa.Column("token", sa.String(64), primary_key=True),
    )
    op.create_index("ix_identity_tokens_token", "identity_tokens", ["token"])
    op.create_table(
        "steps",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(36), sa.ForeignKey("requests.id"), nullable=False),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("found", sa.Integer),
        sa.Column("deleted", sa.Integer),
        sa.Column("anonymized", sa.Integer),
        sa.Column("retained", sa.Integer),
        sa.Column("remaining", sa.Integer),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.Column("details", sa.JSON),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.UniqueConstraint(
            "request_id", "system", "action", name="uq_steps_request_system_action"
        ),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("request_id", sa.String(36)),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(
        sa.table("audit_head", sa.column("id", sa.Integer), sa.column("hash", sa.String)),
        [{"id": 1, "hash": "0" * 64}],
    )


def downgrade() -> None:
    for name in ("audit_head", "audit_events", "steps", "identity_tokens", "requests"):
        op.drop_table(name)
