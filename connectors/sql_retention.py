"""Retention sweeps in one SQL system: the rows of a rule's table whose period ran out,
counted (a dry run) or deleted / anonymized in bounded batches.

Each batch is its own short transaction: the next `batch` expired rows after the last key
seen (keyset order on the primary key, so rows a hold keeps never stall the sweep), their
account checked against the legal holds, the others deleted or anonymized in one
statement. No transaction holds a lock for longer than a batch takes. The predicate is
`counts_from < cutoff`, which an index on that column serves. A second sweep finds the
deleted rows gone and the anonymized ones already in their erased form: it changes
nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, tuple_, update

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
            held_accounts: HeldAccounts) -> Expired:
    """Count what `rule` would touch at `cutoff` (one grouped statement)."""
    table = connector.tables[rule.table]
    owner = table.c[_account_column(connector, rule)]
    stamp = table.c[rule.counts_from]
    with connector.engine.connect() as conn:
        rows = conn.execute(
            select(owner, func.count(), func.min(stamp)).where(stamp < cutoff).group_by(owner)
        ).all()
    owners = {str(r[0]) for r in rows if r[0] is not None}
    kept = held_accounts(owners)
    oldest = min((r[2] for r in rows if r[2] is not None), default=None)
    return Expired(
        rows=sum(int(r[1]) for r in rows),
        held=sum(int(r[1]) for r in rows if r[0] is not None and str(r[0]) in kept),
        oldest=_as_datetime(oldest),
    )


def sweep(connector: SqlConnector, rule: RetentionRule, cutoff: datetime,
          held_accounts: HeldAccounts, batch: int = 1000,
          progress: Callable[[Swept], None] | None = None) -> Swept:
    """Delete or anonymize the rows of `rule` past `cutoff`, `batch` at a time, leaving
    those of accounts a legal hold keeps."""
    mapped = connector.system.tables[rule.table]
    table = connector.tables[rule.table]
    pk = [table.c[c] for c in mapped.primary_key]
    owner = table.c[_account_column(connector, rule)]
    stamp = table.c[rule.counts_from]
    erasable = mapped.erasable_columns(None)
    key = Pseudonymizer(new_key())  # made for this sweep and dropped: anonymous, not pseudonymous
    changed = held = batches = 0
    longest = 0.0
    last: tuple[Any, ...] | None = None
    while True:
        started = time.perf_counter()
        with connector.engine.begin() as conn:
            query = select(*pk, owner).where(stamp < cutoff)
            if last is not None:
                query = query.where(tuple_(*pk) > tuple_(*last) if len(pk) > 1 else pk[0] > last[0])
            rows = conn.execute(query.order_by(*pk).limit(batch)).all()
            if not rows:
                break
            last = tuple(rows[-1][: len(pk)])
            kept = held_accounts({str(r[-1]) for r in rows if r[-1] is not None})
            keys = [tuple(r[: len(pk)]) for r in rows if r[-1] is None or str(r[-1]) not in kept]
            held += len(rows) - len(keys)
            if keys and rule.action == "delete":
                changed += _delete(conn, connector, rule.table, keys)
            elif keys:
                changed += _anonymize(conn, connector, rule.table, keys, erasable, key)
        batches += 1
        longest = max(longest, time.perf_counter() - started)
        if progress is not None:
            progress(Swept(changed, held, batches, longest))
    return Swept(changed, held, batches, longest)


def _delete(conn: Connection, connector: SqlConnector, name: str, keys: list[tuple[Any, ...]]
            ) -> int:
    stmt = delete(connector.tables[name]).where(connector.locator.pk_in(name, keys))
    return int(conn.execute(stmt).rowcount)


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
