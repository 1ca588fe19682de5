"""Legal holds where the work is done: what the holds on a batch's subjects keep in one
system, the scope each erasure is left with, and counting what is kept.

A SQL system is told what is held and keeps those rows itself (`connectors.sql_holds`);
an object store is told only what to erase (a held category keeps its bucket), and a log
system or a partner is held whole or not at all. What is kept whole is counted by a look
(the connector's `verify`): it is there, so it is retained, with the holds' notes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from connectors.base import Outcome, Scope
from dsrflow.datamap import LogsSystem, ObjectsSystem, PartnerSystem, SqlSystem
from dsrflow.holds import Held, held_in
from dsrflow.identities import Subject
from dsrflow.ledger import RequestRecord
from pipeline.runtime import Runtime

# The part a system's step names when holds kept what it holds whole, without a count (a
# partner's copy, which is not asked for).
HELD_PART = "legal_hold"


def held_here(rt: Runtime, system: str, records: list[RequestRecord]) -> dict[str, Held]:
    """What the legal holds in force on each erasing request's subject keep here."""
    return held_for(rt, system,
                    [r.id for r in records if r.type is not None and r.type.erases])


def held_for(rt: Runtime, system: str, request_ids: Sequence[str]) -> dict[str, Held]:
    """What the legal holds in force on these requests' subjects keep in a system."""
    if not request_ids:
        return {}
    categories = frozenset(rt.datamap.systems[system].categories)
    out = {}
    for rid, holds in rt.ledger.holds_for(request_ids).items():
        kept = held_in(holds, system, categories)
        if kept is not None:
            out[rid] = kept
    return out


def erase_scope(
    rt: Runtime, system: str, record: RequestRecord, held: Held | None
) -> tuple[Scope, bool]:
    """The scope a request erases in here, and whether holds keep all of it. A SQL system
    is told what is held (rows of mixed categories are kept whole, see
    `connectors.sql_holds`); elsewhere a held category keeps its bucket, its log system
    or the partner's whole copy."""
    spec = rt.datamap.systems[system]
    if held is None or isinstance(spec, SqlSystem):
        return record.scope, False
    if held.categories is None or isinstance(spec, PartnerSystem | LogsSystem):
        return record.scope, True
    wanted = (record.scope or spec.categories) & spec.categories
    left = wanted - held.categories
    return (frozenset(left), False) if left else (record.scope, True)


def retain(
    rt: Runtime, system: str, scope: Scope, held: Mapping[str, Held], subjects: list[Subject],
) -> dict[str, Outcome]:
    """What holds keep whole in a system: counted by a look (what is there is retained,
    with the holds' notes); a partner's copy is not asked for at all."""
    outcomes: dict[str, Outcome] = {}
    spec = rt.datamap.systems[system]
    looked = ({} if isinstance(spec, PartnerSystem)
              else rt.connector(system).verify(subjects, scope))
    for subject in subjects:
        rid = subject.request_id
        outcome = Outcome()
        notes = held[rid].notes if rid in held else []
        found = looked.get(rid)
        parts = found.parts.items() if found is not None else [(HELD_PART, None)]
        for name, part in parts:
            kept = outcome.part(name)
            kept.found = part.found if part is not None else 0
            kept.retained = part.remaining + part.retained if part is not None else 0
            kept.retain_reasons = sorted({*notes, *(part.retain_reasons if part else [])})
        outcomes[rid] = outcome
    return outcomes


Work = Callable[[list[Subject]], dict[str, Outcome]]


def counting(
    rt: Runtime, system: str, members: list[RequestRecord], held: Mapping[str, Held],
    work: Work,
) -> Work:
    """`work`, and a count of what partial holds keep in an object store (told only what
    to erase: the held buckets are looked at, and what is there is retained with the
    holds' notes), so the step shows what was kept, not only what went. A SQL system
    counts its held rows itself; logs and partners are held whole or not at all."""
    spec = rt.datamap.systems[system]
    if not held or not isinstance(spec, ObjectsSystem):
        return work
    records = {m.id: m for m in members}

    def counted(subjects: list[Subject]) -> dict[str, Outcome]:
        outcomes = work(subjects)
        by_scope: dict[frozenset[str], list[Subject]] = defaultdict(list)
        for subject in subjects:
            kept = held.get(subject.request_id)
            if kept is None or kept.categories is None:
                continue
            wanted = (records[subject.request_id].scope or spec.categories) & spec.categories
            if wanted & kept.categories:
                by_scope[frozenset(wanted & kept.categories)].append(subject)
        for scope, group in by_scope.items():
            for rid, extra in retain(rt, system, scope, held, group).items():
                target = outcomes.setdefault(rid, Outcome())
                for name, part in extra.parts.items():
                    target.parts.setdefault(name, part)
        return outcomes

    return counted


def keep(rt: Runtime, system: str, held: Mapping[str, Held], done: Sequence[str]) -> None:
    """Record the parts holds kept back here (and keep the identities to finish them),
    for the requests whose step succeeded (`done`): a failed one runs again anyway."""
    finished = set(done)
    rt.ledger.keep_held_parts([
        (rid, system, [h.id for h in kept.holds]) for rid, kept in sorted(held.items())
        if rid in finished
    ])
