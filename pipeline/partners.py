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
from connectors.partner import (
    BLOCKING,
    Acknowledgement,
    Answer,
    Correction,
    Partner,
    PartnerRejected,
    new_subject_request_id,
)
from dsrflow.datamap import PartnerSystem, SqlSystem
from dsrflow.errors import NotOnRecord, safe_error
from dsrflow.exports import write_export
from dsrflow.ledger import PartnerRequest, RequestRecord
from dsrflow.model import PARTNER_DONE, PartnerStatus, StepAction, StepStatus, action_for
from pipeline.closing import close_finished
from pipeline.runtime import Runtime

# Polled: every request a polled partner may hold and has not finished. `created` too: a
# run killed between the POST and its ledger write leaves it so, and the poll (or a 404,
# then a resend under the same id) settles it.
POLLED = frozenset(
    s for s in PartnerStatus
    if s not in PARTNER_DONE and s not in (PartnerStatus.BLOCKED,
                                           PartnerStatus.AWAITING_CONFIRMATION)
)


def send(rt: Runtime, system: str, members: Sequence[RequestRecord]) -> dict[str, Outcome]:
    """Hand each request to the partner, once. Only a request the partner never
    acknowledged (`created`) is sent, again under the id committed before the first
    attempt; one it acknowledged is waiting (polled or called back), one it finished is
    done, one blocked stays blocked with its reason until a person retries it (`dsrflow
    partner retry`). A partner that is down raises (the task retries, with the same ids);
    a refusal blocks that request only."""
    connector = rt.partner(system)
    subjects = {s.request_id: s for s in rt.ledger.subjects(m.id for m in members)}
    rows = {p.request_id: p for p in rt.ledger.partner_requests([m.id for m in members])
            if p.system == system}
    outcomes: dict[str, Outcome] = {}
    for member in members:
        outcome = outcomes[member.id] = Outcome()
        row = rows.get(member.id)
        if row is not None and row.status != PartnerStatus.CREATED:
            _as_recorded(rt, system, member, row, outcome)  # a rerun: never asked twice
            continue
        assert member.type is not None and member.regime is not None
        srid = rt.ledger.partner_request_id(member.id, system, new_subject_request_id)
        if row is not None and connector.polled and _known(
            rt, connector, system, member, srid, outcome
        ):
            continue  # an earlier attempt's request did arrive: not sent twice
        url = callback_url(rt, system) if connector.calls_back else None
        try:
            ack = connector.hand_over(
                subjects[member.id], member.type.value, member.regime.value, srid,
                url, submitted_time=member.received_at,
                corrections=corrections_for(rt, connector.system, member.id),
            )
        except BLOCKING as exc:
            if rt.ledger.update_partner(member.id, system, PartnerStatus.BLOCKED,
                                        error=safe_error(exc)):
                outcome.blocked = safe_error(exc)
            else:
                _as_now(rt, system, member, outcome)
            continue
        if not _record(rt, system, member.id, ack):
            # The partner called back before its acknowledgement was recorded.
            _as_now(rt, system, member, outcome)
        elif ack.state is PartnerStatus.SUBMITTED:
            outcome.pending = _waiting(system, ack.expected_completion_at)
        elif ack.state is PartnerStatus.AWAITING_CONFIRMATION:
            outcome.pending = ack.note
    return outcomes


def corrections_for(rt: Runtime, spec: PartnerSystem, request_id: str) -> list[Correction]:
    """A rectification's corrected values in the partner's categories (what it was sent
    of the subject), each with its category and field; none for other requests."""
    out = []
    for target, value in sorted(rt.ledger.corrections(request_id).items()):
        system, table, column = target.split(".", 2)
        found = rt.datamap.systems.get(system)
        if not isinstance(found, SqlSystem) or table not in found.tables:
            continue
        mapped = found.tables[table].columns.get(column)
        if mapped is not None and mapped.category in spec.categories:
            out.append(Correction(mapped.category, f"{table}.{column}", value))
    return out


def _record(rt: Runtime, system: str, request_id: str, ack: Acknowledgement) -> bool:
    """The acknowledgement, in the ledger (compare-and-set); False if the request had
    moved on meanwhile."""
    given = {
        "regulation_sent": ack.regulation,
        "controller_id": ack.controller_id,
        "reference": ack.reference,
        "expected_completion_at": ack.expected_completion_at,
    }
    kept: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    return rt.ledger.update_partner(request_id, system, ack.state, error=None, **kept)


def _known(
    rt: Runtime, connector: Partner, system: str, member: RequestRecord, srid: str,
    outcome: Outcome,
) -> bool:
    """Whether the partner already has a request an earlier attempt sent (a run killed, or
    a reply lost, between the POST and its ledger write): asked by its id before sending
    it again. If it does, its answer is applied and nothing is sent."""
    try:
        answer = connector.where(srid)
    except PartnerRejected as exc:
        if exc.status_code == 404:
            return False
        raise
    apply_status(rt, system, member.id, answer)
    _as_now(rt, system, member, outcome)
    return True


def _as_now(rt: Runtime, system: str, member: RequestRecord, outcome: Outcome) -> None:
    row = _row(rt, member.id, system)
    assert row is not None
    _as_recorded(rt, system, member, row, outcome)


def _as_recorded(
    rt: Runtime, system: str, member: RequestRecord, row: PartnerRequest, outcome: Outcome
) -> None:
    """The step's outcome from what the ledger says of the partner request, sending nothing:
    done (nothing to wait for), blocked (with its reason), or waiting."""
    state = row.status
    if state in PARTNER_DONE:
        return
    if state is PartnerStatus.BLOCKED:
        outcome.blocked = row.error or f"{system} blocked the request"
    elif state is PartnerStatus.AWAITING_CONFIRMATION:
        assert member.type is not None
        contact = rt.partner(system).system.contact
        if row.reference:
            outcome.pending = (f"{system} acknowledged (reference {row.reference}) and "
                               "will report back: confirm when it does")
        elif contact:
            outcome.pending = f"ask {contact} to carry out the {member.type.value} and confirm it"
        else:
            outcome.pending = (f"a person asks {system} to carry out the "
                               f"{member.type.value}, and confirms it")
    else:
        outcome.pending = _waiting(system, row.expected_completion_at)


def callback_url(rt: Runtime, system: str) -> str | None:
    base = rt.settings.callback_base_url
    return f"{base.rstrip('/')}/opendsr/callbacks/{system}" if base else None


def check(rt: Runtime) -> dict[str, str]:
    """Poll every OpenDSR request still waiting; apply what the partners say; close the
    requests that have nothing left to wait for. One partner's failure (down, a malformed
    or badly signed answer) is that partner's: its request is blocked with the reason (at
    once when the answer cannot be trusted, after `partner_check_failures` checks in a row
    when it does not come), and every other partner is still checked. Returns request id
    -> what happened."""
    happened: dict[str, str] = {}
    for row in rt.ledger.partner_requests(statuses=POLLED):
        system, rid = row.system, row.request_id
        if system not in rt.datamap.systems or not rt.partner(system).polled:
            continue  # confirmed by people (manual, acknowledged webhooks), not polled
        try:
            happened[rid] = _check_one(rt, system, row)
        except BLOCKING as exc:
            happened[rid] = block(rt, system, rid, f"status check: {safe_error(exc)}")
        except Exception as exc:  # this partner's trouble, not the others'
            happened[rid] = _not_answered(rt, system, row, safe_error(exc))
    close_finished(rt, list(happened))
    return happened


def _check_one(rt: Runtime, system: str, row: PartnerRequest) -> str:
    rid = row.request_id
    try:
        status = rt.partner(system).where(row.subject_request_id)
    except PartnerRejected as exc:
        if exc.status_code != 404:
            raise
        # The partner does not have it (lost, or never reached by a run killed before its
        # POST was recorded): send it again, under the same id. One it said it was working
        # on and then forgot is for a person to look at.
        if row.status != PartnerStatus.CREATED and not rt.ledger.update_partner(
            rid, system, PartnerStatus.CREATED, expect=frozenset({PartnerStatus.SUBMITTED})
        ):
            return block(rt, system, rid, f"{system} no longer knows the request it "
                                          f"reported as {row.status}")
        _resend(rt, system, rid)
        return f"{system}: resent"
    return apply_status(rt, system, rid, status)


def _not_answered(rt: Runtime, system: str, row: PartnerRequest, reason: str) -> str:
    failures = row.poll_failures + 1
    rid = row.request_id
    if failures >= rt.settings.partner_check_failures:
        return block(rt, system, rid,
                     f"no answer to {failures} status checks in a row: {reason}")
    rt.ledger.update_partner(rid, system, poll_failures=failures, error=reason)
    return f"{system}: not checked ({reason}); tried again at the next check"


def block(rt: Runtime, system: str, request_id: str, reason: str) -> str:
    """Block a partner request (and its step) until a person acts; a no-op if the request
    has moved on meanwhile (the partner finished)."""
    if rt.ledger.update_partner(request_id, system, PartnerStatus.BLOCKED, error=reason):
        rt.ledger.record_step(request_id, system, "partner",
                              _action(rt.ledger.get(request_id)), StepStatus.BLOCKED,
                              error=reason)
        return f"{system}: blocked: {reason}"
    current = _row(rt, request_id, system)
    return f"{system}: already {current.status if current else 'unknown'}"


def apply_status(rt: Runtime, system: str, request_id: str, status: Answer) -> str:
    """Record a partner's answer (a poll or a callback): idempotent, and a finished step is
    never moved back (the partner request's state changes by compare-and-set)."""
    current = _row(rt, request_id, system)
    if current is None or current.status in (*PARTNER_DONE, PartnerStatus.BLOCKED):
        return f"{system}: already {current.status if current else 'unknown'}"
    record = rt.ledger.get(request_id)
    action = _action(record)
    if status.request_status == "completed":
        if record.type is not None and record.type.collects and status.results_url:
            # The link may grant access to the subject's data at the partner: it waits
            # encrypted with the other collected records, for the access package only.
            write_export(rt.settings.exports_path, rt.ledger.keyring, request_id, system,
                         {"results": [{"results_url": status.results_url,
                                       "results_count": status.results_count}]})
        if rt.ledger.update_partner(request_id, system, PartnerStatus.COMPLETED, error=None,
                                    poll_failures=0):
            rt.ledger.record_step(request_id, system, "partner", action, StepStatus.SUCCEEDED,
                                  details={"partner_status": "completed",
                                           "results_count": status.results_count})
    elif status.request_status == "cancelled":
        block(rt, system, request_id, f"{system} cancelled the request")
    else:
        rt.ledger.update_partner(
            request_id, system, PartnerStatus(status.request_status), error=None,
            poll_failures=0, expected_completion_at=status.expected_completion_time,
        )
    return f"{system}: {status.request_status}"


def retry(rt: Runtime, request_id: str, system: str) -> None:
    """A person sends a blocked partner request again (once the partner's objection is
    dealt with): it goes back to `created`, under the same id, and the request's next run
    sends it."""
    current = _row(rt, request_id, system)
    if current is None:
        raise NotOnRecord(f"request {request_id} was never handed to {system}")
    if not rt.ledger.update_partner(request_id, system, PartnerStatus.CREATED, error=None,
                                    poll_failures=0,
                                    expect=frozenset({PartnerStatus.BLOCKED})):
        raise NotOnRecord(f"request {request_id} is {current.status} at {system}, not "
                          "blocked: nothing to retry")
    rt.ledger.record_step(request_id, system, "partner", _action(rt.ledger.get(request_id)),
                          StepStatus.FAILED,
                          error=f"to be sent to {system} again: run the request")


def confirm(
    rt: Runtime, request_id: str, system: str, by: str, reference: str,
    at: datetime | None = None,
) -> None:
    """A person confirms that a manual partner carried out the request."""
    current = _row(rt, request_id, system)
    if current is None:
        raise NotOnRecord(f"request {request_id} was never handed to {system}")
    if current.status in PARTNER_DONE:
        return
    if not rt.ledger.update_partner(request_id, system, PartnerStatus.CONFIRMED,
                                    confirmed_by=by, reference=reference, error=None):
        return  # finished meanwhile
    when = (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    rt.ledger.record_step(request_id, system, "partner", _action(rt.ledger.get(request_id)),
                          StepStatus.SUCCEEDED,
                          details={"confirmed_by": by, "reference": reference,
                                   "confirmed_at": when})
    close_finished(rt, [request_id])


def _resend(rt: Runtime, system: str, request_id: str) -> None:
    record = rt.ledger.get(request_id)
    outcome = send(rt, system, [record])[request_id]
    if outcome.blocked:
        rt.ledger.record_step(request_id, system, "partner", _action(record),
                              StepStatus.BLOCKED, error=outcome.blocked)


def _row(rt: Runtime, request_id: str, system: str) -> PartnerRequest | None:
    rows = [p for p in rt.ledger.partner_requests([request_id]) if p.system == system]
    return rows[0] if rows else None


def _action(record: RequestRecord) -> StepAction:
    assert record.type is not None
    return action_for(record.type)


def _waiting(system: str, expected: datetime | None) -> str:
    when = f", expected by {expected.date().isoformat()}" if expected else ""
    return f"waiting for {system}{when}"
