"""The ledger: requests, steps and the audit trail (SQLAlchemy; SQLite or PostgreSQL)."""

from dsrflow.ledger.store import (
    ClosedRequest,
    ExtensionRefused,
    Ledger,
    RequestRecord,
    StepCounts,
    UnknownRequest,
)

__all__ = [
    "ClosedRequest",
    "ExtensionRefused",
    "Ledger",
    "RequestRecord",
    "StepCounts",
    "UnknownRequest",
]
