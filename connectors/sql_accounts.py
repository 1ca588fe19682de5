"""Accounts in a SQL system, for retention sweeps: those whose period ran out (a cancelled
account 30 days after `cancelled_at`), and which account ids still exist (an upload whose
account is gone is an orphan)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from typing import Any

from sqlalchemy import null, select

from connectors.sql import SqlConnector, as_date
from dsrflow.datamap import AccountRetentionRule
from dsrflow.identities import IdentityType

CHUNK = 1000  # ids per IN list: well under every dialect's bound-parameter limit


def account_column(connector: SqlConnector, table: str) -> str:
    """The `user_id` identity column of `table` (the data map refuses an account rule on a
    table without one)."""
    return next(i.column for i in connector.system.tables[table].identities
                if i.type is IdentityType.USER_ID)


def expired_accounts(connector: SqlConnector, rule: AccountRetentionRule, cutoff: datetime
                     ) -> Iterator[tuple[str, datetime, date | None]]:
    """(account id, when its period started, its birth date for a `minors_only` rule) of
    every account whose `counts_from` is before `cutoff`, oldest first, streamed (a first
    sweep may meet many)."""
    mapped = connector.system.tables[rule.table]
    table = connector.tables[rule.table]
    account = table.c[account_column(connector, rule.table)]
    stamp = table.c[rule.counts_from]
    born = (table.c[mapped.birth_date_column] if rule.minors_only and mapped.birth_date_column
            else null())
    with connector.engine.connect() as conn:
        result = conn.execution_options(yield_per=CHUNK).execute(
            select(account, stamp, born).where(stamp < cutoff, account.is_not(None))
            .order_by(stamp, account))
        for value, started, birth in result:
            yield str(value), started, as_date(birth)


def existing(connector: SqlConnector, table: str, column: str, ids: Iterable[str]) -> set[str]:
    """Those of `ids` (as they appear in object keys) that are values of `table.column`.
    An id that cannot be a value of the column (letters for an integer key) is returned
    too: a sweep deletes only what is surely an orphan."""
    col = connector.tables[table].c[column]
    wanted: dict[Any, set[str]] = defaultdict(set)  # "7" and "007" are both account 7's
    found: set[str] = set()
    for raw in set(ids):
        value = _as_column_value(col, raw)
        if value is None:
            found.add(raw)
        else:
            wanted[value].add(raw)
    keys = list(wanted)
    with connector.engine.connect() as conn:
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start:start + CHUNK]
            for value in conn.execute(select(col).where(col.in_(chunk))).scalars():
                found |= wanted.get(value, set())
    return found


def _as_column_value(col: Any, raw: str) -> Any:
    try:
        kind = col.type.python_type
    except NotImplementedError:
        return raw
    if kind is int:
        return int(raw) if raw.isascii() and raw.isdigit() else None
    return raw if kind is str else None
