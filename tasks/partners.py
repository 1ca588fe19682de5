"""Propagating requests to partners, exactly once, without holding a worker while they work.

- `send`: for each request, the partner's `subject_request_id` is written to the ledger and
  committed before anything is sent; every retry, rerun or crash recovery sends that same
  id, which the partner treats as the same request. The step then waits as
  `pending_external`.
- `check`: the scheduled look at everything still waiting: a partner's status (OpenDSR
  polling, for partners whose callback never came) moves its step on, and a request whose
  last step finished is closed.
- `confirm`: a person records that a manual partner did it (who, their reference).
- `callback`: an authenticated OpenDSR callback, applied like a poll result.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from connectors.base import Outcome
from connectors.opendsr import (
    NoSupportedIdentity,
    OpenDsrPartner,
    PartnerRejected,
    ProtocolError,
    UnsupportedRequest,
    Untrusted,
    new_subject_request_id,
)
from connectors.opendsr import Status as PartnerStatus
from connectors.partners import ManualPartner
from connectors.webhook import WebhookReceipt
from dsrflow.datamap import PartnerSystem
from dsrflow.errors import NotOnRecord, safe_error
from dsrflow.exports import write_export
from dsrflow.ledger import RequestRecord
from dsrflow.model import Status, StepStatus
from tasks.runtime import Runtime

WAITING = ("created", "submitted", "pending", "in_progress", "awaiting_confirmation")
# What the partner refused, or what we could not trust: retrying would not help.
BLOCKING = (PartnerRejected, Untrusted, ProtocolError, NoSupportedIdentity, UnsupportedRequest)


def send(rt: Runtime, system: str, members: Sequence[RequestRecord]) -> dict[str, Outcome]:
    """Hand each request to the partner. A partner that is down raises (the task retries,
    with the same ids); a refusal blocks that request only."""
    connector = rt.partner(system)
    subjects = {s.request_id: s for s in rt.ledger.subjects(m.id for m in members)}
    done = {
        p["request_id"]
        for p in rt.ledger.partner_requests([m.id for m in members])
        if p["system"] == system and p["status"] in ("completed", "confirmed")
    }
    outcomes: dict[str, Outcome] = {}
    for member in members:
        outcome = outcomes[member.id] = Outcome()
        if member.id in done:
            continue  # a rerun: the partner already finished this one
        assert member.type is not None and member.regime is not None
        srid = rt.ledger.partner_request_id(member.id, system, new_subject_request_id)
        if isinstance(connector, ManualPartner):
            rt.ledger.update_partner(member.id, system, status="awaiting_confirmation")
            outcome.pending = connector.instructions(member.type.value)
            continue
        # Webhooks do not call back: their acknowledgement is the answer.
        url = callback_url(rt, system) if isinstance(connector, OpenDsrPartner) else None
        try:
            receipt = connector.submit(
                subjects[member.id], member.type.value, member.regime.value, srid,
                url, submitted_time=member.received_at,
            )
        except BLOCKING as exc:
            reason = safe_error(exc)
            rt.ledger.update_partner(member.id, system, status="blocked", error=reason)
            outcome.blocked = reason
            continue
        if isinstance(receipt, WebhookReceipt):
            _acknowledged(rt, system, member.id, receipt, outcome)
            continue
        rt.ledger.update_partner(
            member.id, system, status="submitted", regulation_sent=receipt.regulation,
            controller_id=receipt.controller_id,
            expected_completion_at=receipt.expected_completion_time,
        )
        outcome.pending = _waiting(system, receipt.expected_completion_time)
    return outcomes


def _acknowledged(
    rt: Runtime, system: str, request_id: str, receipt: WebhookReceipt, outcome: Outcome
) -> None:
    """A webhook partner's answer: done, or taken on with a person to confirm later."""
    status = "completed" if receipt.completed else "awaiting_confirmation"
    rt.ledger.update_partner(
        request_id, system, status=status, regulation_sent=receipt.regulation,
        reference=receipt.reference, error=None,
    )
    if not receipt.completed:
        outcome.pending = (
            f"{system} acknowledged (reference {receipt.reference or '-'}) and will report "
            "back: confirm when it does"
        )


def callback_url(rt: Runtime, system: str) -> str | None:
    base = rt.settings.callback_base_url
    return f"{base.rstrip('/')}/opendsr/callbacks/{system}" if base else None


def check(rt: Runtime) -> dict[str, str]:
    """Poll every OpenDSR request still waiting; apply what the partners say; close the
    requests that have nothing left to wait for. Returns request id -> what happened."""
    happened: dict[str, str] = {}
    for row in rt.ledger.partner_requests(statuses=WAITING):
        system = str(row["system"])
        spec = rt.datamap.systems[system]
        if not isinstance(spec, PartnerSystem) or spec.protocol != "opendsr":
            continue  # manual and webhook partners are confirmed by people, not polled
        connector = rt.partner(system)
        assert isinstance(connector, OpenDsrPartner)
        try:
            status = connector.status(str(row["subject_request_id"]))
        except PartnerRejected as exc:
            if exc.status_code == 404:
                # The partner lost it: send it again, under the same id.
                happened[row["request_id"]] = f"{system}: resent"
                _resend(rt, system, str(row["request_id"]))
                continue
            raise
        happened[row["request_id"]] = apply_status(rt, system, str(row["request_id"]), status)
    close_finished(rt, list(happened))
    return happened


def apply_status(rt: Runtime, system: str, request_id: str, status: PartnerStatus) -> str:
    """Record a partner's answer (a poll or a callback): idempotent, and a finished step is
    never moved back."""
    current = _row(rt, request_id, system)
    if current is None or current["status"] in ("completed", "confirmed", "blocked"):
        return f"{system}: already {current['status'] if current else 'unknown'}"
    record = rt.ledger.get(request_id)
    action = _action(record)
    if status.request_status == "completed":
        if record.type is not None and record.type.collects and status.results_url:
            # The link may grant access to the subject's data at the partner: it waits
            # encrypted with the other collected records, for the access package only.
            write_export(rt.settings.exports_path, rt.ledger.keyring, request_id, system,
                         {"results": [{"results_url": status.results_url,
                                       "results_count": status.results_count}]})
        rt.ledger.update_partner(request_id, system, status="completed", error=None)
        rt.ledger.record_step(request_id, system, "partner", action, StepStatus.SUCCEEDED,
                              details={"partner_status": "completed",
                                       "results_count": status.results_count})
    elif status.request_status == "cancelled":
        reason = f"{system} cancelled the request"
        rt.ledger.update_partner(request_id, system, status="blocked", error=reason)
        rt.ledger.record_step(request_id, system, "partner", action, StepStatus.BLOCKED,
                              error=reason)
    else:
        rt.ledger.update_partner(
            request_id, system, status=status.request_status,
            expected_completion_at=status.expected_completion_time,
        )
    return f"{system}: {status.request_status}"


def confirm(
    rt: Runtime, request_id: str, system: str, by: str, reference: str,
    at: datetime | None = None,
) -> None:
    """A person confirms that a manual partner carried out the request."""
    current = _row(rt, request_id, system)
    if current is None:
        raise NotOnRecord(f"request {request_id} was never handed to {system}")
    if current["status"] == "confirmed":
        return
    rt.ledger.update_partner(request_id, system, status="confirmed", confirmed_by=by,
                             reference=reference, error=None)
    when = (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    rt.ledger.record_step(request_id, system, "partner", _action(rt.ledger.get(request_id)),
                          StepStatus.SUCCEEDED,
                          details={"confirmed_by": by, "reference": reference,
                                   "confirmed_at": when})
    close_finished(rt, [request_id])


def close_finished(rt: Runtime, request_ids: Sequence[str]) -> dict[str, Status]:
    """Close the requests among these that have no step left waiting."""
    from tasks import deliverables
    from tasks.steps import close_requests

    waiting = {
        str(s["request_id"])
        for s in rt.ledger.steps(list(request_ids))
        if s["status"] in (StepStatus.PENDING_EXTERNAL.value, StepStatus.RUNNING.value)
    }
    ready = [
        rid for rid in dict.fromkeys(request_ids)
        if rid not in waiting and rt.ledger.get(rid).status is Status.IN_PROGRESS
    ]
    if not ready:
        return {}
    deliverables.produce(rt, ready)
    return close_requests(rt, ready).statuses


def _resend(rt: Runtime, system: str, request_id: str) -> None:
    record = rt.ledger.get(request_id)
    outcome = send(rt, system, [record])[request_id]
    if outcome.blocked:
        rt.ledger.record_step(request_id, system, "partner", _action(record),
                              StepStatus.BLOCKED, error=outcome.blocked)


def _row(rt: Runtime, request_id: str, system: str) -> dict[str, Any] | None:
    rows = [p for p in rt.ledger.partner_requests([request_id]) if p["system"] == system]
    return rows[0] if rows else None


def _action(record: RequestRecord) -> str:
    from tasks.steps import action_for

    assert record.type is not None
    return action_for(record.type).value


def _waiting(system: str, expected: datetime | None) -> str:
    when = f", expected by {expected.date().isoformat()}" if expected else ""
    return f"waiting for {system}{when}"
