"""The ledger: requests, steps and the audit trail (SQLAlchemy; SQLite or PostgreSQL)."""

from dsrflow.ledger.steps import StepCounts, StepWrite
from dsrflow.ledger.store import (
    ClosedRequest,
    ExtensionRefused,
    Ledger,
    RequestRecord,
    UnknownRequest,
)

__all__ = [
    "ClosedRequest",
    "ExtensionRefused",
    "Ledger",
    "RequestRecord",
    "StepCounts",
    "StepWrite",
    "UnknownRequest",
]
