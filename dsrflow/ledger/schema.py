"""The ledger's tables. The migrations under `migrations/` create them; this module is the
one description the code queries through."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

requests = Table(
    "requests",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("ticket_id", String(128)),
    Column("type", String(32)),
    Column("regime", String(16)),
    Column("channel", String(64)),
    Column("scope", JSON),
    Column("status", String(32), nullable=False),
    Column("reason", Text),
    Column("verification_method", String(64)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("verified_at", DateTime(timezone=True)),
    Column("due_at", DateTime(timezone=True)),
    Column("deadline_error", Text),
    # An extension (GDPR +2 months, CCPA +45 days): the new due date, the date the subject
    # was told, and the reason given. `due_at` keeps the original period.
    Column("extended_due_at", DateTime(timezone=True)),
    Column("extension_notice_at", DateTime(timezone=True)),
    Column("extension_reason", Text),
    Column("completed_at", DateTime(timezone=True)),
    # A guardian acting for the subject (their identities are in `subject_enc`).
    Column("guardian_relation", String(32)),
    Column("guardian_verification_method", String(64)),
    Column("guardian_verified_at", DateTime(timezone=True)),
    # Identities and corrections, AES-GCM under the installation key; dropped on close.
    Column("subject_enc", LargeBinary),
    # The per-request pseudonym key, encrypted; destroyed on close so pseudonyms become
    # irreversible.
    Column("pseudonym_key_enc", LargeBinary),
    Column("datamap_version", String(64)),
    Column("policy_version", String(64)),
    # A follow-up request (an erasure a legal hold held back, re-queued on its release):
    # the request it finishes, and the only systems it goes to.
    Column("follows_request_id", String(36)),
    Column("systems", JSON),
    # The identities, kept (encrypted) past the close while a legal hold keeps part of the
    # subject's data, to finish the erasure once it is released.
    Column("held_subject_enc", LargeBinary),
    Column("flow_run_id", String(36)),
    # The run that holds the request (a Prefect flow run id) and until when: one run per
    # request at a time; a crashed run's lease expires and a resume takes the request over.
    Column("lease_owner", String(64)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(
        "uq_requests_ticket",
        "ticket_id",
        unique=True,
        sqlite_where=text("status != 'rejected'"),
        postgresql_where=text("status != 'rejected'"),
    ),
    Index("ix_requests_status", "status"),
    Index("ix_requests_lease_owner", "lease_owner"),
)

identity_tokens = Table(
    "identity_tokens",
    metadata,
    Column("request_id", String(36), ForeignKey("requests.id"), primary_key=True),
    Column("type", String(32), primary_key=True),
    Column("token", String(64), primary_key=True),
    Index("ix_identity_tokens_token", "token"),
)

steps = Table(
    "steps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(36), ForeignKey("requests.id"), nullable=False),
    Column("system", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("action", String(32), nullable=False),
    Column("status", String(32), nullable=False),
    Column("found", Integer),
    Column("deleted", Integer),
    Column("anonymized", Integer),
    Column("retained", Integer),
    Column("remaining", Integer),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    Column("details", JSON),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    UniqueConstraint("request_id", "system", "action", name="uq_steps_request_system_action"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("request_id", String(36)),
    Column("event", String(64), nullable=False),
    Column("detail", JSON),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# One row per request × partner: the OpenDSR subject_request_id is written here, and
# committed, before the request is sent, so no retry or crash ever sends a second one.
partner_requests = Table(
    "partner_requests",
    metadata,
    Column("request_id", String(36), ForeignKey("requests.id"), primary_key=True),
    Column("system", String(64), primary_key=True),
    Column("subject_request_id", String(36), nullable=False, unique=True),
    Column("status", String(32), nullable=False),
    Column("regulation_sent", String(16)),
    Column("controller_id", String(128)),
    Column("expected_completion_at", DateTime(timezone=True)),
    Column("confirmed_by", String(128)),
    Column("reference", String(128)),
    Column("error", Text),
    # Status checks in a row that could not get an answer (partner down, a malformed or
    # badly signed answer); reset by an answer. Past a bound, the request is blocked.
    Column("poll_failures", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# What each of the policy's gates decided about a request, once (a rerun reads it back).
gate_decisions = Table(
    "gate_decisions",
    metadata,
    Column("request_id", String(36), ForeignKey("requests.id"), primary_key=True),
    Column("gate", String(32), primary_key=True),
    Column("decision", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    # The earlier request a repeat repeats.
    Column("related_request_id", String(36)),
    Column("decided_at", DateTime(timezone=True), nullable=False),
)

legal_holds = Table(
    "legal_holds",
    metadata,
    Column("id", String(36), primary_key=True),
    # The request that names the subject: its identity tokens are the hold's.
    Column("request_id", String(36), ForeignKey("requests.id"), nullable=False),
    Column("reason", String(32), nullable=False),  # the policy's exemption (6.6.3)
    Column("citation", Text, nullable=False),
    Column("categories", JSON),  # None: every category
    Column("systems", JSON),  # None: every system
    Column("until", DateTime(timezone=True), nullable=False),
    Column("approved_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("released_at", DateTime(timezone=True)),
    Column("released_by", String(128)),
    Column("release_reason", Text),
    Index("ix_legal_holds_request", "request_id"),
)

# A request's erasure in one system that holds kept back, until it is re-queued.
held_parts = Table(
    "held_parts",
    metadata,
    Column("request_id", String(36), ForeignKey("requests.id"), primary_key=True),
    Column("system", String(64), primary_key=True),
    Column("hold_ids", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("requeued_request_id", String(36)),
    Column("requeued_at", DateTime(timezone=True)),
)

# What each completed erasure covered, for replaying it on a database restored from a
# backup: the subject is named by the request's identity tokens, which outlive it.
tombstones = Table(
    "tombstones",
    metadata,
    Column("request_id", String(36), ForeignKey("requests.id"), primary_key=True),
    Column("type", String(32), nullable=False),
    Column("scope", JSON),
    Column("systems", JSON, nullable=False),  # the systems whose erasure succeeded
    Column("completed_at", DateTime(timezone=True), nullable=False),
    Index("ix_tombstones_completed_at", "completed_at"),
)

# One row: the hash at the head of the audit chain. Writers lock it, so the chain never forks.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("hash", String(64), nullable=False),
)
