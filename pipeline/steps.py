"""The work of one system for a batch of requests, recorded in the ledger. Plain Python:
the Prefect tasks in `tasks.systems` wrap these, and tests may call them directly.

Requests in a batch are grouped by what they ask of the system (collect, erase in a given
scope, rectify, restrict), and each group is one connector call: one pass over the system
however many requests the batch holds.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from connectors.base import Outcome, Scope
from connectors.logs import LogsConnector
from connectors.objects import ObjectsConnector
from connectors.sql import Discovery, SqlConnector
from dsrflow.datamap import ObjectsSystem, PartnerSystem, SqlSystem
from dsrflow.errors import StepFailed, safe_error
from dsrflow.exports import write_export
from dsrflow.holds import Held
from dsrflow.identities import Identity, Subject
from dsrflow.ledger import PLAN, PROGRESS, RequestRecord, StepCounts, StepWrite
from dsrflow.model import (
    IDENTITIES_KEY,
    RUN_KEY,
    SEARCHED_KEY,
    SENSITIVE_KEY,
    RequestType,
    Status,
    StepAction,
    StepStatus,
    action_for,
)
from pipeline import legal_holds, partners
from pipeline.isolation import run_isolated
from pipeline.leases import lease_ttl
from pipeline.runs import current_run
from pipeline.runtime import Runtime


@dataclass(frozen=True)
class StepResult:
    request_id: str
    system: str
    action: StepAction
    status: StepStatus
    found: int = 0
    deleted: int = 0
    anonymized: int = 0
    retained: int = 0
    remaining: int | None = None
    error: str | None = None


def applies(rt: Runtime, system: str, record: RequestRecord) -> bool:
    """Whether a request concerns a system at all: its scope (if any) meets the system's
    categories, and a rectification names a field in it."""
    spec = rt.datamap.systems[system]
    if record.systems is not None and system not in record.systems:
        return False  # a follow-up goes only where a legal hold held it back
    if isinstance(spec, PartnerSystem):
        return _reaches_partner(rt, spec, record)
    if record.type is RequestType.RECTIFICATION:
        return any(t.startswith(f"{system}.") for t in rt.ledger.corrections(record.id))
    if record.type is RequestType.RESTRICTION:
        return isinstance(spec, SqlSystem) and any(
            t.restriction_column for t in spec.tables.values()
        )
    if record.scope is None:
        return True
    return bool(set(spec.categories) & record.scope)


def _reaches_partner(rt: Runtime, spec: PartnerSystem, record: RequestRecord) -> bool:
    """Whether a request must be passed on to a partner (GDPR Art. 19: rectifications,
    erasures and restrictions go to every recipient of the data): an erasure, cancellation,
    withdrawal or access in its categories; a restriction; a rectification of a field in
    one of its categories."""
    assert record.type is not None
    if record.type is RequestType.RECTIFICATION:
        return bool(partners.corrections_for(rt, spec, record.id))
    if record.type is RequestType.RESTRICTION:
        return True
    if not (record.type.erases or record.type.collects):
        return False
    return record.scope is None or bool(set(spec.categories) & record.scope)


def apply_to_system(rt: Runtime, system: str, request_ids: Sequence[str]) -> list[StepResult]:
    """Collect, erase, rectify or restrict, as each request asks; an erasure leaves what
    legal holds keep. Raises `StepFailed` (after recording every outcome) if any group
    failed, so the caller's retry policy applies."""
    records = rt.ledger.get_many(request_ids)
    records = _hold_back(rt, system, records)
    held = legal_holds.held_here(rt, system, records)
    groups: dict[tuple[StepAction, Scope, bool], list[RequestRecord]] = defaultdict(list)
    for record in records:
        assert record.type is not None
        action = action_for(record.type)
        scope, whole = legal_holds.erase_scope(rt, system, record, held.get(record.id))
        groups[(action, scope, whole)].append(record)
    results: list[StepResult] = []
    for (action, scope, whole), members in sorted(
            groups.items(), key=lambda g: (g[0][0].value, g[0][2])):
        mine = {m.id: held[m.id] for m in members if m.id in held}
        work = (partial(legal_holds.retain, rt, system, scope, mine) if whole
                else legal_holds.counting(rt, system, members, mine,
                               partial(_do, rt, system, action, members, scope, mine)))
        results += _run_group(rt, system, action, members, work)
    legal_holds.keep(rt, system, held, [r.request_id for r in results
                                         if r.status is StepStatus.SUCCEEDED])
    _raise_if_failed(system, results)
    return results


def key_readers(rt: Runtime, system: str) -> set[str]:
    """Systems that find their data through keys this system lists (objects whose keys
    sit in a SQL column): they must erase before this system does."""
    readers = set()
    for name, spec in rt.datamap.systems.items():
        if isinstance(spec, ObjectsSystem) and any(
            rule.keys_from is not None and rule.keys_from.system == system
            for bucket in spec.buckets.values()
            for rule in bucket.ownership
        ):
            readers.add(name)
    return readers


def _hold_back(rt: Runtime, system: str, records: list[RequestRecord]) -> list[RequestRecord]:
    """Do not erase the keys a reader still needs: if a reader failed for a request, this
    system keeps that request's rows until a rerun, so the objects can still be found."""
    readers = key_readers(rt, system)
    if not readers:
        return records
    failed = {
        (s.request_id, s.system)
        for s in rt.ledger.steps([r.id for r in records], actions=[StepAction.ERASE],
                                 statuses=[StepStatus.FAILED])
    }
    kept = []
    kind = rt.datamap.systems[system].kind
    for record in records:
        blocking = sorted(r for r in readers if (record.id, r) in failed)
        if record.type is not None and record.type.erases and blocking:
            rt.ledger.record_step(
                record.id, system, kind, StepAction.ERASE, StepStatus.FAILED,
                error=f"held back: {', '.join(blocking)} could not erase what this system "
                "lists; rerun once it can",
            )
        else:
            kept.append(record)
    return kept


def verify_system(rt: Runtime, system: str, request_ids: Sequence[str]) -> list[StepResult]:
    """Look again: what a fresh look-up still finds of each erased subject (what legal
    holds keep is retained, not left)."""
    records = [r for r in rt.ledger.get_many(request_ids) if r.type and r.type.erases]
    held = legal_holds.held_here(rt, system, records)
    by_scope: dict[tuple[Scope, bool], list[RequestRecord]] = defaultdict(list)
    for record in records:
        by_scope[legal_holds.erase_scope(rt, system, record, held.get(record.id))].append(record)
    results: list[StepResult] = []
    for (scope, whole), members in by_scope.items():
        mine = {m.id: held[m.id] for m in members if m.id in held}
        work = (partial(legal_holds.retain, rt, system, scope, mine) if whole
                else legal_holds.counting(rt, system, members, mine,
                               partial(_verify, rt, system, scope, mine)))
        results += _run_group(rt, system, StepAction.VERIFY, members, work)
    # Data left behind is recorded as a failed verification, not retried: looking again
    # will not change it. Only a verification that could not run is worth a retry.
    _raise_if_failed(system, [r for r in results if r.remaining is None])
    return results


def _verify(
    rt: Runtime, system: str, scope: Scope, held: Mapping[str, Held], subjects: list[Subject],
) -> dict[str, Outcome]:
    connector = rt.connector(system)
    if isinstance(connector, SqlConnector):
        return connector.verify(subjects, scope, held=held)
    return connector.verify(subjects, scope)


def _do(
    rt: Runtime, system: str, action: StepAction, members: list[RequestRecord], scope: Scope,
    held: Mapping[str, Held], subjects: list[Subject],
) -> dict[str, Outcome]:
    if isinstance(rt.datamap.systems[system], PartnerSystem):
        # The requests of `subjects` only: when isolation halves the batch to find the
        # request that fails, each half is sent its own requests, not the whole batch.
        asked = {s.request_id for s in subjects}
        return partners.send(rt, system, [m for m in members if m.id in asked])
    connector = rt.connector(system)
    if action is StepAction.ERASE:
        keys = rt.ledger.pseudonymizers([s.request_id for s in subjects])
        # These say what they are about to do before doing it (SQL: before its commit;
        # objects: before the first deletion), so a run killed in between is counted.
        prepared = partial(_prepare, rt, system, PLAN)
        if isinstance(connector, SqlConnector):
            return connector.erase(subjects, scope, keys, prepared=prepared, held=held)
        if isinstance(connector, ObjectsConnector):
            return connector.erase(subjects, scope, keys, prepared=prepared)
        if isinstance(connector, LogsConnector):
            # Files are rewritten one by one: what is done so far is told as it goes, and
            # stays counted if the call stops (the isolation retry reports only the rest).
            # A file reported, then not marked so before a crash, is not reported twice:
            # the connector is told which reports the ledger has counted.
            ids = [s.request_id for s in subjects]
            try:
                return connector.erase(
                    subjects, scope, keys, progress=partial(_prepare, rt, system, PROGRESS),
                    counted=rt.ledger.counted_pieces(system, StepAction.ERASE, ids))
            except BaseException:
                rt.ledger.settle_progress(system, StepAction.ERASE, ids)
                raise
        return connector.erase(subjects, scope, keys)
    if action is StepAction.COLLECT:
        collected = connector.collect(subjects, scope)
        outcomes = {}
        for rid, records in collected.items():
            write_export(rt.settings.exports_path, rt.ledger.keyring, rid, system, records)
            outcome = Outcome()
            for part, rows in records.items():
                outcome.part(part).found = len(rows)
            outcomes[rid] = outcome
        return outcomes
    if action is StepAction.RECTIFY:
        sql = rt.sql(system)
        return {
            s.request_id: sql.rectify(
                s,
                {
                    target.split(".", 1)[1]: value
                    for target, value in rt.ledger.corrections(s.request_id).items()
                    if target.startswith(f"{system}.")
                },
            )
            for s in subjects
        }
    return rt.sql(system).restrict(subjects)


def _counts(outcome: Outcome, action: StepAction) -> StepCounts:
    return StepCounts(
        found=outcome.total("found"),
        deleted=outcome.total("deleted"),
        anonymized=outcome.total("anonymized"),
        retained=outcome.total("retained"),
        remaining=outcome.total("remaining") if action is StepAction.VERIFY else None,
    )


def _prepare(
    rt: Runtime, system: str, mode: str, outcomes: Mapping[str, Outcome], *pieces: str
) -> None:
    """Record what an erasure is about to commit, or has done so far and the pieces that
    covers (see `Ledger.prepare_steps`)."""
    rt.ledger.prepare_steps(system, StepAction.ERASE, {
        rid: (_counts(o, StepAction.ERASE), o.details()) for rid, o in outcomes.items()
    }, mode=mode, pieces=pieces)


def _run_group(
    rt: Runtime,
    system: str,
    action: StepAction,
    members: list[RequestRecord],
    work: Callable[[list[Subject]], dict[str, Outcome]],
) -> list[StepResult]:
    spec = rt.datamap.systems[system]
    kind = spec.kind
    rt.ledger.record_steps(system, kind, action,
                           [StepWrite(m.id, StepStatus.RUNNING) for m in members])
    searched: dict[str, dict[str, int]] = {}
    outcomes: dict[str, Outcome] = {}
    try:
        subjects = rt.ledger.subjects(m.id for m in members)
    except Exception as exc:  # recorded, then re-raised as StepFailed by the caller
        failures = dict.fromkeys((m.id for m in members), safe_error(exc))
    else:
        if not isinstance(spec, PartnerSystem):  # a partner is sent what it accepts
            searched = {s.request_id: _by_type(s.identities) for s in subjects}
        # A request whose identity the system cannot use fails alone; the batch goes on.
        outcomes, failures = run_isolated(work, subjects)
    results = []
    writes = []
    for member in members:
        if member.id in failures:
            writes.append(StepWrite(member.id, StepStatus.FAILED, error=failures[member.id]))
            results.append(StepResult(member.id, system, action, StepStatus.FAILED,
                                      error=failures[member.id]))
            continue
        outcome = outcomes.get(member.id, Outcome())
        counts = _counts(outcome, action)
        status = StepStatus.SUCCEEDED
        error: str | None = None  # for a step that is not done: why
        if outcome.blocked:
            status, error = StepStatus.BLOCKED, outcome.blocked
        elif outcome.pending:
            status, error = StepStatus.PENDING_EXTERNAL, outcome.pending
        if action is StepAction.VERIFY and counts.remaining:
            left = [n for n, p in sorted(outcome.parts.items()) if p.remaining]
            status = StepStatus.FAILED
            error = f"{counts.remaining} rows remain after erasure in {', '.join(left)}"
        details = outcome.details()
        if run := current_run():
            details[RUN_KEY] = run
        if member.id in searched:
            details[SEARCHED_KEY] = searched[member.id]
        if touched := _sensitive(rt, system, member, outcome):
            details[SENSITIVE_KEY] = touched
        writes.append(StepWrite(member.id, status, counts, error, details))
        results.append(StepResult(member.id, system, action, status, **counts.__dict__,
                                  error=error))
    rt.ledger.record_steps(system, kind, action, writes)  # one transaction
    return results


def _sensitive(rt: Runtime, system: str, record: RequestRecord, outcome: Outcome) -> list[str]:
    """The sensitive categories (policy 2.1) the step touched: those of the parts where it
    found or changed something, within the request's scope; for a partner, what it was
    asked about."""
    sensitive = rt.datamap.sensitive
    if not sensitive:
        return []
    scope = record.scope
    if isinstance(rt.datamap.systems[system], PartnerSystem):
        # Asked, unless a legal hold kept its copy (then it was not asked at all).
        sent = legal_holds.HELD_PART not in outcome.parts and not outcome.blocked
        cats = frozenset(rt.datamap.systems[system].categories) if sent else frozenset()
    else:
        cats = frozenset().union(*(
            rt.datamap.part_categories(system, name) for name, part in outcome.parts.items()
            if part.found or part.deleted or part.anonymized or part.retained
        ))
    return sorted(cats & sensitive & (scope if scope is not None else cats))


def _raise_if_failed(system: str, results: list[StepResult]) -> None:
    """Raise for failures worth a retry (a blocked step is not: it needs a person)."""
    failed = [r for r in results if r.status is StepStatus.FAILED]
    if failed:
        raise StepFailed(
            f"{system}: {len(failed)} of {len(results)} steps failed: {failed[0].error}"
        )


# -- the request around the steps ------------------------------------------------------------
RUNNABLE = frozenset(
    {Status.VERIFIED, Status.IN_PROGRESS, Status.FAILED, Status.PARTIALLY_COMPLETED}
)


@dataclass(frozen=True)
class Gate:
    ready: list[str]
    held: dict[str, str]  # request id -> why it does not run now


def open_requests(rt: Runtime, request_ids: Sequence[str], *, owner: str) -> Gate:
    """Let verified (or unfinished) requests in, each under a lease held by `owner` (the
    run): one run per request at a time. Everything else waits, with a reason: a request
    another run holds (which one, until when), one not verified yet (no connector runs for
    it, policy 6.6.1), one already closed."""
    taken = rt.ledger.take_leases(request_ids, owner, lease_ttl(rt))
    held = {
        rid: f"held by run {h.owner} until {h.expires_at:%Y-%m-%d %H:%M:%S}Z; skipped here"
        for rid, h in taken.held.items()
    }
    records = rt.ledger.get_many(taken.granted)
    after = rt.ledger.transition_many(
        {r.id: (Status.IN_PROGRESS, None) for r in records if r.status in RUNNABLE},
        expect=RUNNABLE)
    ready, idle = [], []
    for record in records:
        if after.get(record.id) is Status.IN_PROGRESS:
            ready.append(record.id)
            continue
        status = after.get(record.id, record.status)
        idle.append(record.id)
        held[record.id] = ("identity not verified yet"
                           if status is Status.AWAITING_VERIFICATION
                           else f"request is {status.value}")
    rt.ledger.release_leases(idle, owner)
    missing = set(request_ids) - set(ready) - set(held)
    for rid in sorted(missing):
        held[rid] = "no such request"
    return Gate(ready, held)


def resolve_identities(rt: Runtime, request_ids: Sequence[str]) -> dict[str, int]:
    """Before anything is erased, learn every identity each subject's own rows hold in the
    SQL systems (the account ids, phones, emails, device ids and IP addresses behind the
    ticket's email), so every system and every later verification looks for all of them,
    whichever identities the ticket gave. Recorded as a `resolve` step per SQL system: a
    look-up that failed is a failed step, never "nothing to learn", so the request cannot
    close as completed on what the other systems could not look for. Returns how many
    identities were learnt per request."""
    subjects = rt.ledger.subjects(request_ids)
    learnt = dict.fromkeys(request_ids, 0)
    known = {s.request_id: set(s.identities) for s in subjects}
    for name, _ in rt.datamap.sql_systems():
        discovered, failures = run_isolated(partial(_discover, rt, name), subjects)
        writes, new_identities = [], {}
        for subject in subjects:
            rid = subject.request_id
            if rid in failures:
                writes.append(StepWrite(rid, StepStatus.FAILED,
                                        error=f"identities not resolved: {failures[rid]}"))
                continue
            found = discovered.get(rid, Discovery())
            if new := found.found - known[rid]:
                new_identities[rid] = new
                known[rid] |= new
                learnt[rid] += len(new)
            # Identities, not rows: the counts stay in the details, out of the row totals.
            writes.append(StepWrite(rid, StepStatus.SUCCEEDED, details={IDENTITIES_KEY: {
                "learnt": _by_type(found.found),
                "withheld": dict(sorted(found.withheld.items())),
                "unreadable": dict(sorted(found.unreadable.items())),
            }}))
        # The identities before the steps that say they were learnt: a crash between
        # leaves them known and the step to do again, never the other way round.
        rt.ledger.add_identities_many(new_identities)
        rt.ledger.record_steps(name, "sql", StepAction.RESOLVE, writes)
    return learnt


def _discover(rt: Runtime, system: str, subjects: list[Subject]) -> dict[str, Discovery]:
    return rt.sql(system).discover(subjects)


def _by_type(identities: Iterable[Identity]) -> dict[str, int]:
    """How many identities of each type (never the values)."""
    return dict(sorted(Counter(i.type.value for i in identities).items()))


@dataclass(frozen=True)
class Plan:
    # Systems in one wave run in parallel; a wave starts when the one before has finished.
    # A system comes after every system that reads keys from it (see `key_readers`).
    waves: list[dict[str, list[str]]]  # system -> requests it must serve
    verify: dict[str, list[str]]  # system -> requests whose erasure it must prove


def plan_systems(rt: Runtime, request_ids: Sequence[str]) -> Plan:
    """Which systems each request concerns, in waves. A request whose identities could not
    be resolved goes nowhere this run: every system would look for less than the account
    holds, and a look-up that failed must never end as "nothing left"."""
    records = _resolved(rt, rt.ledger.get_many(request_ids))
    apply: dict[str, list[str]] = {}
    verify: dict[str, list[str]] = {}
    for system in rt.datamap.systems:
        wanted = [r for r in records if applies(rt, system, r)]
        if wanted:
            apply[system] = [r.id for r in wanted]
        erasing = [r.id for r in wanted if r.type is not None and r.type.erases]
        if erasing and not isinstance(rt.datamap.systems[system], PartnerSystem):
            # A partner's own completion is the proof there: nothing for us to look at.
            verify[system] = erasing
    depth: dict[str, int] = {}

    def wave_of(system: str) -> int:
        if system not in depth:
            depth[system] = 1 + max((wave_of(r) for r in key_readers(rt, system)), default=-1)
        return depth[system]

    waves: list[dict[str, list[str]]] = []
    for system, ids in apply.items():
        index = wave_of(system)
        while len(waves) <= index:
            waves.append({})
        waves[index][system] = ids
    return Plan([w for w in waves if w], verify)


def _resolved(rt: Runtime, records: list[RequestRecord]) -> list[RequestRecord]:
    """The requests whose identity resolution succeeded; the others get a failed step, with
    the reason, in every system they concern that has not already done its part."""
    unresolved = {s.request_id: s.system for s in rt.ledger.steps(
        [r.id for r in records], actions=[StepAction.RESOLVE], statuses=[StepStatus.FAILED])}
    if not unresolved:
        return records
    done = {(s.request_id, s.system) for s in rt.ledger.steps(
                list(unresolved),
                statuses=[StepStatus.SUCCEEDED, StepStatus.PENDING_EXTERNAL, StepStatus.BLOCKED])
            if s.action != StepAction.RESOLVE}
    failed: dict[tuple[str, StepAction], list[StepWrite]] = defaultdict(list)
    for record in records:
        if record.id not in unresolved or record.type is None:
            continue
        for system in rt.datamap.systems:
            if applies(rt, system, record) and (record.id, system) not in done:
                failed[(system, action_for(record.type))].append(StepWrite(
                    record.id, StepStatus.FAILED,
                    error=f"not run: the request's identities could not be resolved in "
                          f"{unresolved[record.id]}; rerun once they can"))
    for (system, action), writes in failed.items():
        rt.ledger.record_steps(system, rt.datamap.systems[system].kind, action, writes)
    return [r for r in records if r.id not in unresolved]
