"""The ledger's rows as the rest of the pipeline reads them: typed, immutable, no identities.

Every reader gets the same names and types (a `StepStatus`, a `PartnerStatus`, UTC
datetimes) instead of a dict read by string keys, so a renamed column or a misspelt state
is a type error in one place, not a silent `None` in a dozen modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from dsrflow.ledger.times import utc
from dsrflow.model import PartnerStatus, Regime, RequestType, Status, StepAction, StepStatus


@dataclass(frozen=True)
class RequestRecord:
    """A request as the rest of the pipeline sees it: no identities."""

    id: str
    ticket_id: str | None
    type: RequestType | None
    regime: Regime | None
    channel: str | None
    scope: frozenset[str] | None
    status: Status
    reason: str | None
    received_at: datetime
    verified_at: datetime | None
    due_at: datetime | None
    deadline_error: str | None
    completed_at: datetime | None
    datamap_version: str | None
    policy_version: str | None
    extended_due_at: datetime | None = None
    extension_notice_at: datetime | None = None
    extension_reason: str | None = None
    created_at: datetime | None = None  # when the ledger recorded it (ties in receipt time)
    guardian_relation: str | None = None  # a guardian acts for the subject (policy 7.x)
    guardian_verified_at: datetime | None = None
    # A follow-up that finishes what a legal hold held back: the request, and its systems.
    follows_request_id: str | None = None
    systems: frozenset[str] | None = None

    @property
    def effective_due_at(self) -> datetime | None:
        """The due date that binds now: the extended one, if the request was extended."""
        return self.extended_due_at or self.due_at

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RequestRecord:
        return cls(
            id=row["id"],
            ticket_id=row["ticket_id"],
            type=RequestType(row["type"]) if row["type"] else None,
            regime=Regime(row["regime"]) if row["regime"] else None,
            channel=row["channel"],
            scope=frozenset(row["scope"]) if row["scope"] else None,
            status=Status(row["status"]),
            reason=row["reason"],
            received_at=utc(row["received_at"]),
            verified_at=utc(row["verified_at"]),
            due_at=utc(row["due_at"]),
            deadline_error=row["deadline_error"],
            completed_at=utc(row["completed_at"]),
            datamap_version=row["datamap_version"],
            policy_version=row["policy_version"],
            extended_due_at=utc(row["extended_due_at"]),
            extension_notice_at=utc(row["extension_notice_at"]),
            extension_reason=row["extension_reason"],
            created_at=utc(row["created_at"]),
            guardian_relation=row["guardian_relation"],
            guardian_verified_at=utc(row["guardian_verified_at"]),
            follows_request_id=row["follows_request_id"],
            systems=frozenset(row["systems"]) if row["systems"] is not None else None,
        )


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One request × system × action: what was done and what it found."""

    id: int
    request_id: str
    system: str
    kind: str  # the system's kind ("sql", "logs", "s3", "partner") or "deliverable"
    action: StepAction
    status: StepStatus
    found: int | None = None
    deleted: int | None = None
    anonymized: int | None = None
    retained: int | None = None
    remaining: int | None = None  # what verification still found (None: not verified)
    attempts: int = 0
    error: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> StepRecord:
        return cls(
            id=int(row["id"]),
            request_id=str(row["request_id"]),
            system=str(row["system"]),
            kind=str(row["kind"]),
            action=StepAction(row["action"]),
            status=StepStatus(row["status"]),
            found=row["found"],
            deleted=row["deleted"],
            anonymized=row["anonymized"],
            retained=row["retained"],
            remaining=row["remaining"],
            attempts=int(row["attempts"] or 0),
            error=row["error"],
            details=dict(row["details"] or {}),
            started_at=utc(row["started_at"]),
            finished_at=utc(row["finished_at"]),
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain values (enums as their strings), for tables and frames."""
        return {**asdict(self), "action": self.action.value, "status": self.status.value,
                "details": dict(self.details)}


@dataclass(frozen=True, slots=True)
class PartnerRequest:
    """A request handed to one partner, under the id the partner knows it by."""

    request_id: str
    system: str
    subject_request_id: str
    status: PartnerStatus
    regulation_sent: str | None = None
    controller_id: str | None = None
    expected_completion_at: datetime | None = None
    confirmed_by: str | None = None
    reference: str | None = None
    error: str | None = None
    poll_failures: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> PartnerRequest:
        return cls(
            request_id=str(row["request_id"]),
            system=str(row["system"]),
            subject_request_id=str(row["subject_request_id"]),
            status=PartnerStatus(row["status"]),
            regulation_sent=row["regulation_sent"],
            controller_id=row["controller_id"],
            expected_completion_at=utc(row["expected_completion_at"]),
            confirmed_by=row["confirmed_by"],
            reference=row["reference"],
            error=row["error"],
            poll_failures=int(row["poll_failures"] or 0),
            created_at=utc(row["created_at"]),
            updated_at=utc(row["updated_at"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}
