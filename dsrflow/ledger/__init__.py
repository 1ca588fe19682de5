"""The ledger: requests, steps and the audit trail (SQLAlchemy; SQLite or PostgreSQL)."""

from dsrflow.ledger.rows import PartnerRequest, RequestRecord, StepRecord
from dsrflow.ledger.steps import StepCounts, StepWrite
from dsrflow.ledger.store import (
    ClosedRequest,
    ExtensionRefused,
    Ledger,
    UnknownRequest,
)

__all__ = [
    "ClosedRequest",
    "ExtensionRefused",
    "Ledger",
    "PartnerRequest",
    "RequestRecord",
    "StepCounts",
    "StepRecord",
    "StepWrite",
    "UnknownRequest",
]
