"""Replaying erasures on a database restored from a backup: the classic way erased people
come back is a restore nobody followed with the erasures made since the backup.

Every completed erasure left a tombstone (the systems it covered, its type and scope) and
its subject's keyed identity tokens. A replay reads the restored system's identity columns,
finds the values whose tokens a tombstone names (the account id first: unambiguous, where
an email or phone could be a family's), and erases those subjects again with the same
connector and the same legal holds, then verifies. Idempotent: a second replay finds
nothing left to change. Recorded in the audit trail (`tombstones.replayed`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from connectors import sql_replay
from connectors.base import Scope
from dsrflow.crypto import Pseudonymizer, new_key
from dsrflow.identities import ACCOUNT_GRADE, IdentityType, Subject
from dsrflow.ledger import Tombstone
from pipeline import legal_holds
from pipeline.runtime import Runtime


@dataclass(frozen=True)
class Replayed:
    system: str
    tombstones: int  # erasures completed in the window that covered the system
    found: int  # of them, subjects the restored data holds again
    deleted: int
    anonymized: int
    retained: int  # kept by legal holds, or shared with someone else
    remaining: int  # what verification still found (0: the restore is clean again)


def replay(rt: Runtime, system: str, since: datetime | None = None) -> Replayed:
    connector = rt.sql(system)  # a SQL system; logs and object stores are not replayed yet
    stones = rt.ledger.tombstones(system, since)
    keyring = rt.ledger.keyring
    wanted: dict[str, set[str]] = defaultdict(set)
    for stone in stones:
        for kind, tokens in _looked_for(stone).items():
            wanted[kind] |= tokens
    found = sql_replay.find_identities(
        connector, lambda i: keyring.token(i.type.value, i.value), wanted)
    subjects: list[Subject] = []
    scopes: dict[str, Scope] = {}
    for stone in stones:
        identities = {i for tokens in _looked_for(stone).values() for t in tokens
                      for i in found.get(t, ())}
        if identities:
            subjects.append(Subject(request_id=stone.request_id,
                                    identities=tuple(sorted(identities, key=str)),
                                    phone_region=connector.system.phone_region))
            scopes[stone.request_id] = stone.scope
    held = legal_holds.held_for(rt, system, [s.request_id for s in subjects])
    totals = dict.fromkeys(("deleted", "anonymized", "retained", "remaining"), 0)
    by_scope: dict[Scope, list[Subject]] = defaultdict(list)
    for subject in subjects:
        by_scope[scopes[subject.request_id]].append(subject)
    for scope, group in by_scope.items():
        mine = {s.request_id: held[s.request_id] for s in group if s.request_id in held}
        # A key made for the replay and dropped: what it pseudonymizes, nobody can reverse.
        keys = {s.request_id: Pseudonymizer(new_key()) for s in group}
        for outcome in connector.erase(group, scope, keys, held=mine).values():
            for count in ("deleted", "anonymized"):
                totals[count] += outcome.total(count)
        for outcome in connector.verify(group, scope, held=mine).values():
            totals["retained"] += outcome.total("retained")
            totals["remaining"] += outcome.total("remaining")
    result = Replayed(system, len(stones), len(subjects), **totals)
    rt.ledger.audit("tombstones.replayed", None, {
        "system": system, "since": since.isoformat() if since else None,
        **{k: v for k, v in result.__dict__.items() if k != "system"},
    })
    return result


def _looked_for(stone: Tombstone) -> dict[str, frozenset[str]]:
    """The tokens a replay looks for: the account ids where the erasure resolved one (an
    email or a phone can be several people's), else every account-grade identity."""
    user_ids = stone.tokens.get(IdentityType.USER_ID.value)
    if user_ids:
        return {IdentityType.USER_ID.value: user_ids}
    return {k: v for k, v in stone.tokens.items() if IdentityType(k) in ACCOUNT_GRADE}
