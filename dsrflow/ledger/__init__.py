"""The ledger: requests, steps and the audit trail (SQLAlchemy; SQLite or PostgreSQL)."""

from dsrflow.ledger.store import Ledger, RequestRecord, StepCounts, UnknownRequest

__all__ = ["Ledger", "RequestRecord", "StepCounts", "UnknownRequest"]
