"""The policy's gates, after the request's identities are known and before any system is
touched:

- a repeat of an earlier request (6.6.2) is allowed, flagged or refused as the settings
  say; a refusal is a closed outcome with a reason the subject can be told;
- a child's request (7.x: under `guardian_age`, by the birth dates in the subject's own
  rows) waits as `awaiting_guardian` until a guardian is verified or the child comes of
  age, and so does any request whose ticket says a guardian acts and is not verified yet.

Neither applies to the erasures a retention sweep files (channel `retention`): the
controller's own decision when an account's period ended, which nobody asks for twice and
no guardian needs to confirm.

The repeat gate decides once per request (the ledger keeps the decision; a rerun reads it
back), so a request flagged today is not refused tomorrow because the settings changed.
Age is judged on the day of each screening: a child who turns 14 while the request waits
is screened again and goes on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial

from dsrflow.gates import (
    POLICY_MINORS,
    Gate,
    GateDecision,
    RepeatDecision,
    of_age_on,
    repeat_of,
    waits_for_guardian,
)
from dsrflow.identities import Subject
from dsrflow.ledger import RequestRecord
from dsrflow.model import RETENTION_CHANNEL, Status, StepAction, StepStatus
from pipeline.isolation import run_isolated
from pipeline.runtime import Runtime

_CONTROLLERS_OWN = ("filed by a retention rule: the controller's own erasure when the "
                    "account's retention period ended, not a subject's request")


def now() -> datetime:
    return datetime.now(UTC)  # looked up when called: tests set the module's clock


@dataclass(frozen=True)
class Screened:
    ready: list[str]  # go on to the systems
    stopped: dict[str, Status] = field(default_factory=dict)  # refused, waiting, failed
    failed: list[str] = field(default_factory=list)  # a look-up failed: rerun


def screen(rt: Runtime, request_ids: Sequence[str]) -> Screened:
    """Run the gates over a batch of requests the run holds (status in_progress)."""
    records = rt.ledger.get_many(request_ids)
    stopped = _refuse_repeats(rt, records)
    # A request whose identities could not be resolved goes to no system this run (the
    # plan records why, step by step): its age is not asked of a system that just failed.
    unresolved = {s.request_id for s in rt.ledger.steps(
        [r.id for r in records], actions=[StepAction.RESOLVE], statuses=[StepStatus.FAILED])}
    # A retention erasure is the controller's own: no guardian is asked to act for it.
    left = [r for r in records if r.id not in stopped and r.id not in unresolved
            and r.channel != RETENTION_CHANNEL]
    waiting, failed = _guardians(rt, left)
    stopped.update(waiting)
    return Screened([r.id for r in records if r.id not in stopped], stopped, failed)


def _refuse_repeats(rt: Runtime, records: list[RequestRecord]) -> dict[str, Status]:
    history = rt.ledger.same_subject_requests([r.id for r in records])
    found: list[GateDecision] = []
    for record in records:
        assert record.type is not None and record.created_at is not None  # a request
        if record.follows_request_id is not None:
            # Finishing what a legal hold held back is the same request, not a new one.
            found.append(GateDecision(
                record.id, Gate.REPEAT, RepeatDecision.NONE.value,
                f"finishes request {record.follows_request_id} once its legal hold ended"))
            continue
        if record.channel == RETENTION_CHANNEL:
            found.append(GateDecision(record.id, Gate.REPEAT, RepeatDecision.NONE.value,
                                      _CONTROLLERS_OWN))
            continue
        found.append(repeat_of(record.id, record.type, record.received_at, record.created_at,
                               history.get(record.id, []), rt.settings.repeats))
    stopped: dict[str, Status] = {}
    for decision in rt.ledger.record_gate_decisions(found):
        if decision.decision == RepeatDecision.REFUSE:
            stopped[decision.request_id] = _move(rt, decision.request_id, Status.REFUSED,
                                                 decision.reason)
    return stopped


def _guardians(
    rt: Runtime, records: list[RequestRecord]
) -> tuple[dict[str, Status], list[str]]:
    """Park the requests that must wait for a guardian; fail those whose age could not be
    read (a look-up that failed never passes for an adult)."""
    if not records:
        return {}, []
    born, unread = _birth_dates(rt, [r.id for r in records])
    age = rt.settings.guardian_age
    stopped: dict[str, Status] = {}
    minors: list[GateDecision] = []
    for record in records:
        if record.id in unread:
            stopped[record.id] = _move(rt, record.id, Status.FAILED, unread[record.id])
            continue
        assert record.regime is not None
        youngest = max(born.get(record.id, []), default=None)
        of_age = of_age_on(youngest, age) if youngest is not None else None
        minor = of_age is not None and rt.deadlines.local_date(record.regime, now()) < of_age
        if minor:
            minors.append(GateDecision(
                record.id, Gate.MINOR, "under_age",
                f"the subject is under {age}" + (
                    f"; a verified {record.guardian_relation.replace('_', ' ')} acts for them"
                    if record.guardian_relation and record.guardian_verified_at else "")
                + f" ({POLICY_MINORS})"))
        why = waits_for_guardian(record.guardian_relation,
                                 record.guardian_verified_at is not None, minor, age)
        if why is not None:
            if rt.ledger.wait_for_guardian(record.id, why, of_age if minor else None):
                stopped[record.id] = Status.AWAITING_GUARDIAN
            else:
                stopped[record.id] = rt.ledger.get(record.id).status
    rt.ledger.record_gate_decisions(minors)
    return stopped, sorted(unread)


def _birth_dates(
    rt: Runtime, request_ids: list[str]
) -> tuple[dict[str, list[date]], dict[str, str]]:
    """Each subject's birth dates across the SQL systems that map one, and why a request's
    could not be read."""
    subjects = rt.ledger.subjects(request_ids)
    born: dict[str, list[date]] = defaultdict(list)
    unread: dict[str, str] = {}
    for name, system in rt.datamap.sql_systems():
        if not any(t.birth_date_column for t in system.tables.values()):
            continue
        found, failures = run_isolated(partial(_born, rt, name), subjects)
        for rid, dates in found.items():
            born[rid] += dates
        for rid, error in failures.items():
            unread.setdefault(rid, f"age not checked in {name} ({POLICY_MINORS}): {error}; "
                              "rerun once it can be read")
    return born, unread


def _born(rt: Runtime, system: str, subjects: list[Subject]) -> dict[str, list[date]]:
    return rt.sql(system).birth_dates(subjects)


def _move(rt: Runtime, request_id: str, target: Status, reason: str) -> Status:
    """Move a request the run holds; what it is now if it had moved on meanwhile."""
    if rt.ledger.transition(request_id, target, reason, expect=frozenset({Status.IN_PROGRESS})):
        return target
    return rt.ledger.get(request_id).status
