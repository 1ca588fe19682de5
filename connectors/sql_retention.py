"""Retention sweeps in one SQL system: the rows of a rule's table whose period ran out,
counted (a dry run) or deleted / anonymized in bounded batches.

Each batch is its own short transaction. A deletion is one statement per batch, run by
the server: `batch` expired rows (`counts_from < cutoff`, served by an index on that
column) of accounts no legal hold keeps, worked out once per sweep. An anonymization reads
the next `batch` expired rows after the last key seen (keyset order: anonymized rows still
match the predicate), transforms them and writes them back in one statement. No
transaction holds a lock for longer than a batch takes. A second sweep finds the deleted
rows gone and the anonymized ones already in their erased form: it changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, func, or_, select, tuple_, update

from connectors.sql import SqlConnector
from dsrflow.anonymize import transform
from dsrflow.crypto import Pseudonymizer, new_key
from dsrflow.datamap import RetentionRule

# Account ids -> those of them whose data a legal hold keeps (in this rule's scope).
HeldAccounts = Callable[[Iterable[str]], set[str]]


class _HeldSince(Exception):
    """A signal within `sweep` (never raised out of it): a batch met held accounts."""

    def __init__(self, accounts: list[Any]) -> None:
        super().__init__("held accounts met in a batch")
        self.accounts = accounts


@dataclass(frozen=True)
class Expired:
    """What a rule would touch: rows past the cutoff, those a hold keeps among them, and
    the oldest timestamp (no value of any row)."""

    rows: int
    held: int
    oldest: datetime | None


@dataclass(frozen=True)
class Swept:
    changed: int  # rows deleted, or anonymized (a row already anonymized is not counted)
    held: int  # expired rows a legal hold kept
    batches: int
    longest_batch_s: float  # the longest any one transaction held its locks


def expired(connector: SqlConnector, rule: RetentionRule, cutoff: datetime,
            held_accounts: HeldAccounts | None) -> Expired:
    """Count what `rule` would touch at `cutoff` (one grouped statement)."""
    table = connector.tables[rule.table]
    owner = table.c[_account_column(connector, rule)]
    stamp = table.c[rule.counts_from]
    with connector.engine.connect() as conn:
        rows = conn.execute(
            select(owner, func.count(), func.min(stamp)).where(stamp < cutoff).group_by(owner)
        ).all()
    owners = {str(r[0]) for r in rows if r[0] is not None}
    kept = held_accounts(owners) if held_accounts is not None else set()
    oldest = min((r[2] for r in rows if r[2] is not None), default=None)
    return Expired(
        rows=sum(int(r[1]) for r in rows),
        held=sum(int(r[1]) for r in rows if r[0] is not None and str(r[0]) in kept),
        oldest=_as_datetime(oldest),
    )


def sweep(connector: SqlConnector, rule: RetentionRule, cutoff: datetime,
          held_accounts: HeldAccounts | None, batch: int = 1000,
          progress: Callable[[Swept], None] | None = None) -> Swept:
    """Delete or anonymize the rows of `rule` past `cutoff`, `batch` at a time, leaving
    those of accounts a legal hold keeps.

    Whose rows are held is worked out once, from the accounts that own expired rows (one
    grouped statement, one keyed token per account); each batch then leaves them out in
    its own statement, so a deletion is one server-side statement per batch. A batch that
    meets an account not seen at the start (a row that ran out since) has it checked
    before the batch commits, and is rolled back and redone without it if it is held.
    `held_accounts` None: no hold in force covers this rule, and none of that is needed."""
    mapped = connector.system.tables[rule.table]
    table = connector.tables[rule.table]
    pk = [table.c[c] for c in mapped.primary_key]
    owner = table.c[_account_column(connector, rule)]
    stamp = table.c[rule.counts_from]
    owners: dict[Any, int] = {}
    if held_accounts is not None:
        with connector.engine.connect() as conn:
            owners = {r[0]: int(r[1]) for r in conn.execute(
                select(owner, func.count()).where(stamp < cutoff).group_by(owner))}
    checked = {str(o) for o in owners if o is not None}
    kept = held_accounts(checked) if held_accounts is not None else set()
    excluded = [o for o in owners if o is not None and str(o) in kept]
    held = sum(owners[o] for o in excluded)
    key = Pseudonymizer(new_key())  # made for this sweep and dropped: anonymous, not pseudonymous
    changed = batches = 0
    longest = 0.0
    last: tuple[Any, ...] | None = None
    while True:
        started = time.perf_counter()
        try:
            with connector.engine.begin() as conn:
                where = [stamp < cutoff]
                if excluded:
                    where.append(or_(owner.is_(None), owner.not_in(excluded)))
                if rule.action == "delete":
                    done, seen, more = _delete_batch(conn, table, pk, owner, where, batch,
                                                     returning=held_accounts is not None)
                else:
                    done, seen, more, last = _anonymize_batch(
                        conn, connector, rule.table, pk, owner, where, batch, last, key)
                unseen = {str(o) for o in seen} - checked
                late = held_accounts(unseen) if unseen and held_accounts else set()
                checked |= unseen
                if late:  # rows of a held account that ran out since the start: not these
                    raise _HeldSince([o for o in seen if str(o) in late])
        except _HeldSince as exc:  # rolled back; redone without that account
            excluded += exc.accounts
            last = None
            continue
        if not more:
            break
        changed += done
        batches += 1
        longest = max(longest, time.perf_counter() - started)
        if progress is not None:
            progress(Swept(changed, held, batches, longest))
    return Swept(changed, held, batches, longest)


def _delete_batch(conn: Connection, table: Table, pk: list[Any], owner: Any, where: list[Any],
                  batch: int, returning: bool) -> tuple[int, set[Any], bool]:
    """One batch deleted server-side: (rows deleted, their accounts if `returning`, whether
    any were)."""
    # No order: the `counts_from` index finds expired rows wherever they are, and a held
    # account's rows are left out by the predicate, so nothing is visited twice.
    doomed = select(*pk).where(*where).limit(batch)
    target = pk[0].in_(doomed.scalar_subquery()) if len(pk) == 1 else tuple_(*pk).in_(doomed)
    if not returning:
        count = int(conn.execute(delete(table).where(target)).rowcount)
        return count, set(), count > 0
    gone = conn.execute(delete(table).where(target).returning(owner)).scalars().all()
    return len(gone), {o for o in gone if o is not None}, bool(gone)


def _anonymize_batch(
    conn: Connection, connector: SqlConnector, name: str, pk: list[Any], owner: Any,
    where: list[Any], batch: int, last: tuple[Any, ...] | None, key: Pseudonymizer,
) -> tuple[int, set[Any], bool, tuple[Any, ...] | None]:
    """One batch anonymized, after the last key seen (an anonymized row still matches the
    predicate): (rows changed, their accounts, whether any rows were left, the last key)."""
    if last is not None:
        where = [*where, tuple_(*pk) > tuple_(*last) if len(pk) > 1 else pk[0] > last[0]]
    rows = conn.execute(select(*pk, owner).where(*where).order_by(*pk).limit(batch)).all()
    if not rows:
        return 0, set(), False, last
    width = len(pk)
    erasable = connector.system.tables[name].erasable_columns(None)
    done = _anonymize(conn, connector, name, [tuple(r[:width]) for r in rows], erasable, key)
    return done, {r[-1] for r in rows if r[-1] is not None}, True, tuple(rows[-1][:width])


def _anonymize(conn: Connection, connector: SqlConnector, name: str,
               keys: list[tuple[Any, ...]], erasable: dict[str, Any], key: Pseudonymizer) -> int:
    if not erasable:
        return 0
    mapped = connector.system.tables[name]
    table = connector.tables[name]
    current = connector.locator.fetch(conn, name, keys, list(erasable))
    updates = []
    for row_key, row in current.items():
        new = {c: transform(col, key)(row[c]) for c, col in erasable.items()}
        if any(new[c] != row[c] for c in erasable):
            updates.append({
                **{f"_pk_{c}": v for c, v in zip(mapped.primary_key, row_key, strict=True)},
                **{f"_v_{c}": v for c, v in new.items()},
            })
    if updates:
        conn.execute(
            update(table)
            .where(*[table.c[c] == bindparam(f"_pk_{c}") for c in mapped.primary_key])
            .values({c: bindparam(f"_v_{c}") for c in erasable}),
            updates,
        )
    return len(updates)


def _account_column(connector: SqlConnector, rule: RetentionRule) -> str:
    column = connector.system.account_column(rule.table)
    assert column is not None  # the data map refuses a rule without one
    return column


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None
