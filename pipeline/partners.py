"""Propagating requests to partners, exactly once, without holding a worker while they work.

- `send`: for each request, the partner's `subject_request_id` is written to the ledger and
  committed before anything is sent (for the whole batch in one transaction); every retry,
  rerun or crash recovery sends that same id, which the partner treats as the same
  request. Up to `partner_concurrency` requests are with one partner at once, each
  recorded as its answer arrives. The step then waits as `pending_external`.
- `check`: the scheduled look at everything still waiting: a partner's status (OpenDSR
  polling, for partners whose callback never came) moves its step on, and a request whose
  last step finished is closed.
- `confirm`: a person records that a manual partner did it (who, their reference).
- `callback`: an authenticated OpenDSR callback, applied like a poll result.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Generator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connectors.base import Outcome
from connectors.partner import (
    BLOCKING,
    Acknowledgement,
    Answer,
    Correction,
    Partner,
    PartnerError,
    PartnerRejected,
    new_subject_request_id,
)
from dsrflow.datamap import PartnerSystem, SqlSystem
from dsrflow.errors import NotOnRecord, safe_error
from dsrflow.exports import write_export
from dsrflow.identities import Subject
from dsrflow.ledger import PartnerRequest, RequestRecord, StepWrite
from dsrflow.model import (
    PARTNER_DONE,
    PartnerStatus,
    RequestType,
    StepAction,
    StepStatus,
    action_for,
)
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
    partner retry`).

    The ids the batch lacks are made and committed in one transaction before anything is
    sent; then up to `concurrency` requests are with the partner at once, and each answer
    is recorded as it arrives (compare-and-set: an answer that came back after a callback
    moved the request on changes nothing). A refusal blocks that request only. A partner
    that is down raises, after every answer that did arrive is recorded: nothing more is
    started, and the task's retry sends the rest, under the same ids."""
    connector = rt.partner(system)
    subjects = {s.request_id: s for s in rt.ledger.subjects(m.id for m in members)}
    rows = {p.request_id: p for p in rt.ledger.partner_requests([m.id for m in members])
            if p.system == system}
    outcomes: dict[str, Outcome] = {}
    due: list[RequestRecord] = []
    for member in members:
        outcomes[member.id] = Outcome()
        row = rows.get(member.id)
        if row is not None and row.status != PartnerStatus.CREATED:
            # A rerun: never asked twice.
            _as_recorded(rt, system, member, row, outcomes[member.id])
        else:
            assert member.type is not None and member.regime is not None
            due.append(member)
    if not due:
        return outcomes
    srids = rt.ledger.partner_request_ids([m.id for m in due], system, new_subject_request_id)
    url = callback_url(rt, system) if connector.calls_back else None
    jobs = [
        _Job(
            member, subjects[member.id], srids[member.id],
            # An earlier attempt may have reached the partner (a run killed, or a reply
            # lost, between the POST and its ledger write): asked before sending again.
            ask_first=member.id in rows and connector.polled,
            # Only a rectification carries corrections: not a ledger read per request.
            corrections=(corrections_for(rt, connector.system, member.id)
                         if member.type is RequestType.RECTIFICATION else []),
        )
        for member in due
    ]
    failure: Exception | None = None
    # Closed however the loop ends: an exception of ours (the ledger) must not leave the
    # pool starting more exchanges whose answers nobody would record.
    with closing(_exchanges(connector, jobs, url, concurrency(rt, system))) as arrivals:
        for arrived in arrivals:
            failed = _record_all(rt, system, arrived, outcomes)
            failure = failure or failed  # the first is raised
    if failure is not None:
        raise failure
    return outcomes


def concurrency(rt: Runtime, system: str) -> int:
    """How many requests may be with this partner at once: its `max_concurrency` in the
    data map, else the `partner_concurrency` setting."""
    spec = rt.datamap.systems[system]
    bound = spec.max_concurrency if isinstance(spec, PartnerSystem) else None
    return bound or rt.settings.partner_concurrency


@dataclass(frozen=True)
class _Job:
    """One request to hand over, with everything the exchange needs read beforehand: the
    pool's threads touch the network only, never the ledger."""

    member: RequestRecord
    subject: Subject
    srid: str
    ask_first: bool
    corrections: list[Correction]


Reply = Acknowledgement | Answer | Exception


def _exchanges(
    connector: Partner, jobs: Sequence[_Job], url: str | None, bound: int
) -> Generator[list[tuple[_Job, Reply]], None, None]:
    """The jobs' exchanges with the partner, at most `bound` at once, yielded as they end:
    all those that ended while the caller was recording the previous ones, together (so
    they are recorded in one transaction, and a slow ledger does not hold the partner's
    answers back one commit each). Each with its acknowledgement, the answer of a partner
    that already had the request, or what it raised.

    Once an exchange has raised anything but a refusal (the partner is down), no other
    starts: those under way end and are yielded, the rest are not (they go at the retry).
    If the caller stops early (an exception of its own), what is in flight ends
    unrecorded, and is asked about before anything is sent again."""
    down = threading.Event()

    def exchange(job: _Job) -> Acknowledgement | Answer | None:
        if down.is_set():
            return None  # not started
        try:
            return _exchange(connector, job, url)
        except BLOCKING:
            raise
        except Exception:
            down.set()  # before this thread takes its next job
            raise

    pool = ThreadPoolExecutor(max_workers=min(bound, len(jobs)),
                              thread_name_prefix="partner-hand-over")
    try:
        job_of = {pool.submit(exchange, job): job for job in jobs}
        waiting = set(job_of)
        while waiting:
            done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
            arrived: list[tuple[_Job, Reply]] = []
            for future in sorted(done, key=lambda f: job_of[f].member.id):
                error = future.exception()
                if error is not None:
                    arrived.append((job_of[future], _as_exception(error)))
                elif (reply := future.result()) is not None:
                    arrived.append((job_of[future], reply))
            if down.is_set():
                # Not needed for correctness (they would not start): not queued either.
                waiting = {f for f in waiting if not f.cancel()}
            if arrived:
                yield arrived
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _record_all(
    rt: Runtime, system: str, arrived: Sequence[tuple[_Job, Reply]],
    outcomes: dict[str, Outcome],
) -> Exception | None:
    """Record answers that arrived together: acknowledgements and refusals in one ledger
    transaction, each a compare-and-set (an answer that lost to a callback changes nothing,
    and the request stands as the callback left it). Returns the first failure (the partner
    was down), if any, for the caller to raise once everything that arrived is recorded."""
    failure: Exception | None = None
    changes: dict[str, tuple[_Job, Acknowledgement | PartnerError]] = {}
    for job, reply in arrived:
        if isinstance(reply, _NotAsked):
            failure = failure or reply.cause
        elif isinstance(reply, Acknowledgement):
            changes[job.member.id] = (job, reply)
        elif isinstance(reply, BLOCKING):
            changes[job.member.id] = (job, reply)  # a refusal: this request only
        elif isinstance(reply, Exception):
            failure = failure or reply
        else:
            # The partner already had it (an earlier attempt's): its answer is applied, and
            # nothing was sent.
            apply_status(rt, system, job.member.id, reply)
            _as_now(rt, system, job.member, outcomes[job.member.id])
    applied = rt.ledger.update_partners(system, [
        (rid, PartnerStatus.BLOCKED, {"error": safe_error(reply)})
        if isinstance(reply, PartnerError) else (rid, reply.state, _kept(reply))
        for rid, (_, reply) in changes.items()
    ])
    for rid, (job, reply) in changes.items():
        outcome = outcomes[rid]
        if rid not in applied:
            # The partner called back before its answer was recorded.
            _as_now(rt, system, job.member, outcome)
        elif isinstance(reply, PartnerError):
            outcome.blocked = safe_error(reply)
        elif reply.state is PartnerStatus.SUBMITTED:
            outcome.pending = _waiting(system, reply.expected_completion_at)
        elif reply.state is PartnerStatus.AWAITING_CONFIRMATION:
            outcome.pending = reply.note
    return failure


class _NotAsked(Exception):
    """The partner refused to say where an earlier attempt's request stands (a status
    look-up answered 4xx, not 404): the request is not blocked for it (the partner did not
    refuse the request), it fails and is asked about again at the retry."""

    def __init__(self, cause: PartnerRejected) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _as_exception(error: BaseException) -> Exception:
    if isinstance(error, Exception):
        return error
    raise error  # not the partner's doing (an interrupt): nothing is recorded of it


def _exchange(connector: Partner, job: _Job, url: str | None) -> Acknowledgement | Answer:
    """On a pool thread: ask the partner for a request an earlier attempt may have sent
    (its answer, when it has it), else hand the request over (the acknowledgement)."""
    if job.ask_first:
        try:
            return connector.where(job.srid)
        except PartnerRejected as exc:
            if exc.status_code != 404:
                raise _NotAsked(exc) from None
    member = job.member
    assert member.type is not None and member.regime is not None
    return connector.hand_over(
        job.subject, member.type.value, member.regime.value, job.srid, url,
        submitted_time=member.received_at, corrections=job.corrections,
    )


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


def _kept(ack: Acknowledgement) -> dict[str, Any]:
    """What an acknowledgement leaves in the ledger (and the error of an earlier attempt
    cleared)."""
    given = {
        "regulation_sent": ack.regulation,
        "controller_id": ack.controller_id,
        "reference": ack.reference,
        "expected_completion_at": ack.expected_completion_at,
    }
    return {"error": None, **{k: v for k, v in given.items() if v is not None}}


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
    rows = rt.ledger.partner_requests(statuses=POLLED)
    sending = _being_sent(rt, rows)
    for row in rows:
        system, rid = row.system, row.request_id
        if system not in rt.datamap.systems or not rt.partner(system).polled:
            continue  # confirmed by people (manual, acknowledged webhooks), not polled
        if rid in sending and row.status is PartnerStatus.CREATED:
            continue  # its run sends it (a 404 here would have it sent twice)
        try:
            happened[rid] = _check_one(rt, system, row)
        except BLOCKING as exc:
            happened[rid] = block(rt, system, rid, f"status check: {safe_error(exc)}")
        except Exception as exc:  # this partner's trouble, not the others'
            happened[rid] = _not_answered(rt, system, row, safe_error(exc))
    close_finished(rt, list(happened))
    return happened


def _being_sent(rt: Runtime, rows: Sequence[PartnerRequest]) -> set[str]:
    """The requests, among those with a partner request not acknowledged yet (`created`),
    that a live run holds: a batch's ids are all committed before its first POST, so such
    a request may be waiting for its turn in that run's hand-over. Once the run ends (or
    dies, and its lease runs out) the check takes them on."""
    created = [r.request_id for r in rows if r.status is PartnerStatus.CREATED]
    if not created:
        return set()
    now = datetime.now(UTC)
    return {rid for rid, holder in rt.ledger.lease_holders(created).items()
            if holder.expires_at > now}


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
    """Record a partner's answer (a poll or a callback): `apply_statuses` for one."""
    return apply_statuses(rt, system, {request_id: status})[request_id]


def apply_statuses(
    rt: Runtime, system: str, answers: Mapping[str, Answer],
    rows: Mapping[str, PartnerRequest] | None = None,
) -> dict[str, str]:
    """Record one partner's answers (polls or callbacks) for several requests: idempotent,
    and a finished step is never moved back (the partner request's state changes by
    compare-and-set). Completions, what callbacks mostly bring, are recorded for all the
    requests at once: one ledger transaction for the partner rows, one per step action.
    `rows`: the requests' rows at this partner by request id, if the caller has just read
    them (what they say only decides what is tried: each change is still a compare-and-set).
    Returns what each answer did, per request."""
    ids = list(answers)
    if rows is None:
        rows = {p.request_id: p for p in rt.ledger.partner_requests(ids)
                if p.system == system}
    records = {r.id: r for r in rt.ledger.get_many(ids)}
    said: dict[str, str] = {}
    completed: dict[str, Answer] = {}
    for request_id, status in answers.items():
        current = rows.get(request_id)
        if current is None or current.status in (*PARTNER_DONE, PartnerStatus.BLOCKED):
            said[request_id] = f"{system}: already {current.status if current else 'unknown'}"
            continue
        said[request_id] = f"{system}: {status.request_status}"
        record = records[request_id]
        if status.request_status == "completed":
            if record.type is not None and record.type.collects and status.results_url:
                # The link may grant access to the subject's data at the partner: it waits
                # encrypted with the other collected records, for the access package only.
                write_export(rt.settings.exports_path, rt.ledger.keyring, request_id, system,
                             {"results": [{"results_url": status.results_url,
                                           "results_count": status.results_count}]})
            completed[request_id] = status
        elif status.request_status == "cancelled":
            block(rt, system, request_id, f"{system} cancelled the request")
        else:
            rt.ledger.update_partner(
                request_id, system, PartnerStatus(status.request_status), error=None,
                poll_failures=0, expected_completion_at=status.expected_completion_time,
            )
    applied = rt.ledger.update_partners(system, [
        (rid, PartnerStatus.COMPLETED, {"error": None, "poll_failures": 0})
        for rid in completed
    ])
    steps: dict[StepAction, list[StepWrite]] = defaultdict(list)
    for rid, status in completed.items():
        if rid in applied:  # else a concurrent answer recorded it first
            steps[_action(records[rid])].append(StepWrite(
                rid, StepStatus.SUCCEEDED,
                details={"partner_status": "completed", "results_count": status.results_count}))
    for action, writes in steps.items():
        rt.ledger.record_steps(system, "partner", action, writes)
    return said


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
