"""The ledger: requests, steps and the audit trail (SQLAlchemy; SQLite or PostgreSQL)."""

from dsrflow.ledger.gates import GuardianMissing
from dsrflow.ledger.holds import HoldRefused
from dsrflow.ledger.rows import PartnerRequest, RequestRecord, StepRecord
from dsrflow.ledger.steps import PLAN, PROGRESS, StepCounts, StepWrite
from dsrflow.ledger.store import (
    ClosedRequest,
    ExtensionRefused,
    Ledger,
    UnknownRequest,
)
from dsrflow.ledger.tombstones import Tombstone

__all__ = [
    "PLAN",
    "PROGRESS",
    "ClosedRequest",
    "ExtensionRefused",
    "GuardianMissing",
    "HoldRefused",
    "Ledger",
    "PartnerRequest",
    "RequestRecord",
    "StepCounts",
    "StepRecord",
    "StepWrite",
    "Tombstone",
    "UnknownRequest",
]
