"""Retention sweeps in one SQL system: the rows of a rule's table whose period ran out,
counted (a dry run) or deleted / anonymized in bounded batches.

Each batch is its own short transaction. A deletion is one statement per batch, run by
the server: `batch` expired rows (`counts_from < cutoff`, served by an index on that
column), of accounts checked against the legal holds and found free when a hold covers the
rule. An anonymization reads the next `batch` expired rows after the last key seen (keyset
order: anonymized rows still match the predicate), transforms them and writes them back in
one statement. No transaction holds a lock for longer than a batch takes. A second sweep
finds the deleted rows gone and the anonymized ones already in their erased form: it
changes nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    MetaData,
    Table,
    bindparam,
    delete,
    func,
    or_,
    select,
    tuple_,
    update,
)

from connectors.sql import SqlConnector
from dsrflow.anonymize import transform
from dsrflow.crypto import Pseudonymizer, new_key
from dsrflow.datamap import RetentionRule

# Account ids -> those of them whose data a legal hold keeps (in this rule's scope).
HeldAccounts = Callable[[Iterable[str]], set[str]]


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

    `held_accounts` None: no hold in force covers this rule, every expired row goes.
    Otherwise a batch takes only rows without an account or of an account already checked
    and found free (`_Accounts`): a row of an account not checked yet is never touched,
    whenever it appeared. Those accounts are read from the expired rows before the first
    batch (one grouped statement, one keyed token per account) and again once the batches
    run dry; an account seen only then (a row that ran out since) is checked, and the
    batches resume if it is free."""
    table = connector.tables[rule.table]
    pk = [table.c[c] for c in connector.system.tables[rule.table].primary_key]
    owner = table.c[_account_column(connector, rule)]
    past = table.c[rule.counts_from] < cutoff
    deletes = rule.action == "delete"
    key = Pseudonymizer(new_key())  # made for this sweep and dropped: anonymous, not pseudonymous
    tally = _Tally()

    def run(conn: Connection, where: list[ColumnElement[bool]], until_empty: bool = False
            ) -> int:
        """Batches of the rows `where` selects until one comes back short (or empty): the
        rows they took."""
        last: tuple[Any, ...] | None = None
        took = 0
        while True:
            started = time.perf_counter()
            with conn.begin():
                if deletes:
                    done = seen = _delete_batch(conn, table, pk, where, batch)
                else:
                    done, seen, last = _anonymize_batch(
                        conn, connector, rule.table, pk, where, batch, last, key)
            if seen == 0:
                return took
            took += seen
            tally.batch(done, time.perf_counter() - started)
            if progress is not None:
                progress(tally.swept())
            if seen < batch and not until_empty:
                return took

    with connector.engine.connect() as conn:
        if held_accounts is None:  # deleting: until a batch finds nothing left
            run(conn, [past], until_empty=deletes)
        else:
            with _Accounts.kept_apart(conn, owner, held_accounts) as accounts:
                ran: int | None = None  # rows the last round's batches took
                while True:
                    left, freed = accounts.review(conn, past)
                    # A round while rows are left that no hold keeps and it would take some:
                    # the first; one for accounts found free since; deleting, one more for
                    # rows that ran out while the last round took its share.
                    if not left or not (ran is None or freed or (deletes and ran)):
                        break
                    ran = run(conn, [past, accounts.free])
                tally.held = accounts.held_rows
    return tally.swept()


@dataclass
class _Tally:
    changed: int = 0
    held: int = 0
    batches: int = 0
    longest: float = 0.0

    def batch(self, changed: int, seconds: float) -> None:
        self.changed += changed
        self.batches += 1
        self.longest = max(self.longest, seconds)

    def swept(self) -> Swept:
        return Swept(self.changed, self.held, self.batches, self.longest)


@dataclass
class _Accounts:
    """The accounts owning expired rows, checked against the holds: those found free in a
    temporary table of the sweep's connection (`free`: a predicate the server evaluates in
    each batch, whatever their number), those a hold keeps with their expired rows."""

    owner: Any  # the rule's account column
    cleared: Table  # the free accounts' ids
    held_accounts: HeldAccounts
    checked: set[str] = field(default_factory=set)
    held: list[Any] = field(default_factory=list)
    held_rows: int = 0

    @classmethod
    @contextmanager
    def kept_apart(cls, conn: Connection, owner: Any, held_accounts: HeldAccounts
                   ) -> Iterator[_Accounts]:
        """The table lives as long as the sweep: created here, dropped on the way out (and
        by the server with the session, whatever happens)."""
        cleared = Table(f"dsrflow_sweep_{uuid.uuid4().hex[:12]}", MetaData(),
                        Column("account", owner.type, primary_key=True, autoincrement=False),
                        prefixes=["TEMPORARY"])
        with conn.begin():
            cleared.create(conn)
        try:
            yield cls(owner, cleared, held_accounts)
        finally:
            with conn.begin():
                cleared.drop(conn)

    @property
    def free(self) -> ColumnElement[bool]:
        """A row no hold can keep: it has no account, or one checked and found free."""
        return or_(self.owner.is_(None), self.owner.in_(select(self.cleared.c.account)))

    def review(self, conn: Connection, past: ColumnElement[bool]) -> tuple[int, int]:
        """Check the accounts owning expired rows that were not checked yet (all of them the
        first time; one grouped statement): (expired rows left that no hold keeps, accounts
        found free)."""
        where = [past]
        if self.held:
            where.append(or_(self.owner.is_(None), self.owner.not_in(self.held)))
        with conn.begin():
            left = {r[0]: int(r[1]) for r in conn.execute(
                select(self.owner, func.count()).where(*where).group_by(self.owner))}
        new = {str(o): o for o in left if o is not None and str(o) not in self.checked}
        kept = self.held_accounts(new.keys()) if new else set()
        self.checked |= new.keys()
        for account in kept & new.keys():
            self.held.append(new[account])
            self.held_rows += left.pop(new[account])
        free = [o for a, o in new.items() if a not in kept]
        if free:
            with conn.begin():
                conn.execute(self.cleared.insert(), [{"account": o} for o in free])
        return sum(left.values()), len(free)


def _delete_batch(conn: Connection, table: Table, pk: list[Any],
                  where: list[ColumnElement[bool]], batch: int) -> int:
    """One batch deleted server-side: the rows deleted."""
    # No order: the `counts_from` index finds expired rows wherever they are, and the rows
    # a batch must not take (a held or unchecked account's) are left out by the predicate,
    # so nothing is visited twice.
    doomed = select(*pk).where(*where).limit(batch)
    target = pk[0].in_(doomed.scalar_subquery()) if len(pk) == 1 else tuple_(*pk).in_(doomed)
    return int(conn.execute(delete(table).where(target)).rowcount)


def _anonymize_batch(
    conn: Connection, connector: SqlConnector, name: str, pk: list[Any],
    where: list[ColumnElement[bool]], batch: int, last: tuple[Any, ...] | None,
    key: Pseudonymizer,
) -> tuple[int, int, tuple[Any, ...] | None]:
    """One batch anonymized, after the last key seen (an anonymized row still matches the
    predicate): (rows changed, rows read, the last key)."""
    if last is not None:
        where = [*where, tuple_(*pk) > tuple_(*last) if len(pk) > 1 else pk[0] > last[0]]
    keys = [tuple(r) for r in conn.execute(select(*pk).where(*where).order_by(*pk).limit(batch))]
    if not keys:
        return 0, 0, last
    erasable = connector.system.tables[name].erasable_columns(None)
    return _anonymize(conn, connector, name, keys, erasable, key), len(keys), keys[-1]
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
