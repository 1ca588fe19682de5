"""SQL connector: any SQLAlchemy database described by the data map.

Whose rows are whose — found along identity columns and declared references, and which of
them also belong to someone outside the request — is `connectors.sql_ownership`. Rows that
also belong to someone else are never changed: they are reported as retained, "shared with
another data subject".

How it erases: one transaction per call, children before parents (order derived from the
references; reference cycles are broken by nulling the cycle's keys first), a DELETE per
table for row-deleting tables, and an UPDATE per table for the rest. Every value is a bound
parameter; identifiers come only from the validated data map and the reflected schema.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    Connection,
    Engine,
    MetaData,
    Table,
    bindparam,
    create_engine,
    delete,
    select,
    update,
)
from sqlalchemy.exc import NoSuchTableError

from connectors.base import Outcome, PartOutcome, Records, Scope
from connectors.collector import without_collection
from connectors.sql_holds import HeldRows, held_rows
from connectors.sql_ownership import SHARED_REASON, Anchor, Key, Located, Locator, listed
from dsrflow.anonymize import transform
from dsrflow.crypto import Pseudonymizer
from dsrflow.datamap import Column, SqlSystem
from dsrflow.datamap import Table as TableMap
from dsrflow.holds import Held
from dsrflow.identities import Identity, Subject
from dsrflow.secret_blocks import SecretBlockError, read_secret_block


class SchemaMismatch(ValueError):
    """The data map names a table or column the database does not have."""


@dataclass
class Discovery:
    """What a subject's own rows say about them: identities the request did not give,
    identities withheld because another person's rows hold them too (a family's phone, a
    shared tablet), and values that could not be read as identities (per type; no value
    is kept)."""

    found: set[Identity] = field(default_factory=set)
    withheld: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)


class SqlConnector:
    kind = "sql"

    def __init__(self, name: str, system: SqlSystem, engine: Engine | None = None) -> None:
        self.name = name
        self.system = system
        self.engine = engine or create_engine(resolve_url(name, system), pool_pre_ping=True)
        self.tables = self._reflect()
        self.locator = Locator(system, self.tables, self.engine.dialect.name)
        self._broken = frozenset(
            (child, ref.table)
            for child, ref in cyclic_references(system)
            if all(self.tables[child].c[c].nullable for c in ref.columns)
        )
        self._order = erase_order(system, self._broken)
        # Whether the rows erasure deletes can be found by the DELETE itself (RETURNING
        # says which went): PostgreSQL, SQLite 3.35+; elsewhere they are read first.
        self.delete_returning = bool(self.engine.dialect.delete_returning)

    # -- set-up -------------------------------------------------------------------------
    def _reflect(self) -> dict[str, Table]:
        metadata = MetaData()
        reflected: dict[str, Table] = {}
        for name, mapped in self.system.tables.items():
            try:
                table = Table(name, metadata, autoload_with=self.engine)
            except NoSuchTableError:
                raise SchemaMismatch(
                    f"systems.{self.name}.tables.{name}: no such table in the database"
                ) from None
            missing = sorted(set(mapped.columns) - set(table.c.keys()))
            if missing:
                raise SchemaMismatch(
                    f"systems.{self.name}.tables.{name}.columns.{missing[0]}: "
                    "no such column in the database"
                )
            reflected[name] = table
        return reflected

    def dispose(self) -> None:
        self.engine.dispose()

    def locate(
        self, conn: Connection, subjects: Sequence[Subject], defer: Collection[str] = ()
    ) -> Located:
        return self.locator.locate(conn, subjects, defer=defer)

    # -- contract -----------------------------------------------------------------------
    def collect(self, subjects: Sequence[Subject], scope: Scope) -> dict[str, Records]:
        """The subjects' rows, per table. A row that also belongs to someone outside the
        request (another customer's order that ships to the subject's address) is theirs
        to see, not the subject's: it is left out."""
        records: dict[str, Records] = {s.request_id: {} for s in subjects}
        with self.engine.connect() as conn:
            located = self.locate(conn, subjects)
            for name, mapped in self.system.tables.items():
                keys = [k for k in located.owners[name] if k not in located.foreign[name]]
                if not keys or not _in_scope(mapped, scope):
                    continue
                wanted = [
                    c for c, col in mapped.columns.items()
                    if scope is None or col.category in scope or c in mapped.primary_key
                ]
                for key, row in self.locator.fetch(conn, name, keys, wanted).items():
                    for rid in located.owners[name][key]:
                        records[rid].setdefault(name, []).append(_jsonable(row))
        return records

    @without_collection  # a batch's many live objects: see connectors/collector.py
    def erase(
        self,
        subjects: Sequence[Subject],
        scope: Scope,
        pseudonymizers: Mapping[str, Pseudonymizer],
        prepared: Callable[[Mapping[str, Outcome]], None] | None = None,
        held: Mapping[str, Held] | None = None,
    ) -> dict[str, Outcome]:
        """Erase the batch in one transaction. `prepared`, if given, is told the outcomes
        just before the commit (to record them where a crash after the commit cannot lose
        them); if it raises, nothing is committed. `held`: per request, what legal holds
        keep (`connectors.sql_holds`): those rows are left as they are (marked restricted
        where the table has a restriction column) and counted retained, with the holds'
        notes as the reason."""
        outcomes = {s.request_id: Outcome() for s in subjects}
        unread = self._unread(scope, held or {})
        with self.engine.begin() as conn:
            located = self.locate(conn, subjects, defer=unread)
            holding = held_rows(conn, self.locator, self.system, located, held or {})
            self._break_cycles(conn, located, scope, holding)
            stamp = datetime.now(UTC)
            for name in self._order:
                mapped = self.system.tables[name]
                if not _in_scope(mapped, scope):
                    continue
                if name in unread:
                    self._delete_unread(conn, name, located, outcomes)
                    continue
                deletes = mapped.deletes_rows(scope)
                left = _Left.of(located, holding, name, deletes)
                keys = [k for k in located.owners[name] if not left.leaves(k)]
                done = _Done()
                if keys and deletes:
                    self._delete(conn, name, keys, done)
                elif keys:
                    self._anonymize(conn, name, keys, located, scope, pseudonymizers, done)
                self._restrict_held(conn, name, holding, stamp, done)
                statements = sorted(done.statements)
                for rid, outcome in outcomes.items():
                    _tally(outcome.part(name), located.rows_of(name, rid), left, done,
                           statements)
            if prepared is not None:
                prepared(outcomes)
        return outcomes

    @without_collection  # a batch's many live objects: see connectors/collector.py
    def verify(
        self, subjects: Sequence[Subject], scope: Scope, held: Mapping[str, Held] | None = None,
    ) -> dict[str, Outcome]:
        """Look again: a row still there that should be gone, or a column that is not in
        its erased form yet, remains; a row kept because it is shared, or held, is
        retained."""
        outcomes = {s.request_id: Outcome() for s in subjects}
        with self.engine.connect() as conn:
            located = self.locate(conn, subjects)
            holding = held_rows(conn, self.locator, self.system, located, held or {})
            for name, mapped in self.system.tables.items():
                keys = list(located.owners[name])
                if not keys or not _in_scope(mapped, scope):
                    continue
                deletes = mapped.deletes_rows(scope)
                erasable = mapped.erasable_columns(scope)
                retained = mapped.retained_columns(scope)
                rows = {} if deletes else self.locator.fetch(
                    conn, name, keys, [*erasable, *retained]
                )
                # Each column's erased form, worked out once for all rows (`is_erased`).
                erased = {c: transform(col, None) for c, col in erasable.items()}
                left = _Left.of(located, holding, name, deletes)
                done = _Done()
                for key in keys:
                    if left.leaves(key):
                        continue
                    row = rows.get(key)
                    if deletes or (row is not None and not all(
                            erased[c](row[c]) == row[c] for c in erasable)):
                        done.remaining.add(key)
                    elif row is not None and (reasons := _held_reasons(retained, row)):
                        done.retained[key] = reasons
                statements = sorted(done.statements)
                for rid, outcome in outcomes.items():
                    _tally(outcome.part(name), located.rows_of(name, rid), left, done,
                           statements)
        return outcomes

    def rectify(self, subject: Subject, corrections: Mapping[str, str]) -> Outcome:
        """Apply `table.column -> value` corrections to the subject's rows (not to a row
        that is also someone else's: correcting it would change their record)."""
        outcome = Outcome()
        by_table: dict[str, dict[str, str]] = defaultdict(dict)
        for target, value in corrections.items():
            table, column = target.split(".", 1)
            by_table[table][column] = value
        with self.engine.begin() as conn:
            located = self.locate(conn, [subject])
            for name, values in by_table.items():
                mine = located.rows_of(name, subject.request_id)
                keys = [k for k in mine if k not in located.shared[name]]
                part = outcome.part(name)
                part.found = len(mine)
                _note_shared(part, len(mine) - len(keys))
                for chunk in self.locator.chunks(keys):
                    stmt = (update(self.tables[name]).where(self.locator.pk_in(name, chunk))
                            .values(values))
                    part.anonymized += conn.execute(stmt).rowcount
                    part.statements.append(_statement_hash(stmt))
        return outcome

    def restrict(self, subjects: Sequence[Subject]) -> dict[str, Outcome]:
        """Mark the subjects' rows as restricted where the data map names a column for it
        (a row that is also someone else's is left as it is)."""
        outcomes = {s.request_id: Outcome() for s in subjects}
        stamp = datetime.now(UTC)
        with self.engine.begin() as conn:
            located = self.locate(conn, subjects)
            for name, mapped in self.system.tables.items():
                column = mapped.restriction_column
                keys = [k for k in located.owners[name] if k not in located.shared[name]]
                if column is None or not located.owners[name]:
                    continue
                table = self.tables[name]
                for chunk in self.locator.chunks(keys):
                    stmt = (
                        update(table)
                        .where(self.locator.pk_in(name, chunk), table.c[column].is_(None))
                        .values({column: stamp})
                    )
                    conn.execute(stmt)
                for rid, outcome in outcomes.items():
                    mine = located.rows_of(name, rid)
                    part = outcome.part(name)
                    part.found = len(mine)
                    restricted = sum(1 for k in mine if k not in located.shared[name])
                    part.retained = restricted
                    if restricted:
                        part.retain_reasons = ["processing restricted at the subject's request"]
                    _note_shared(part, len(mine) - restricted)
        return outcomes

    @without_collection  # a batch's many live objects: see connectors/collector.py
    def discover(self, subjects: Sequence[Subject]) -> dict[str, Discovery]:
        """Every identity the subjects' own rows hold (the data map's identity columns:
        account ids, emails, phones, device ids, IP addresses, third-party logins) that
        the request did not give, so every system — and every verification — looks for all
        of them. Only rows that are the subject's alone count, and an identity is withheld
        when it leads to a row that is also someone else's (a phone a family shares leads
        to another account; a shared tablet's device id to another person's devices row):
        searching logs for it would erase other people's lines."""
        out = {s.request_id: Discovery() for s in subjects}
        by_id = {s.request_id: s for s in subjects}
        # Only the tables that decide whose the identity-holding rows are: the rows that
        # point at them (a history, a comment) change nothing of that. The others are
        # still asked for nothing, so that a table the erasure cannot read fails this
        # step, before any system erases anything for these requests.
        within = self.locator.identity_tables
        with self.engine.connect() as conn:
            self.locator.touch(conn, [t for t in self.system.tables if t not in within])
            first = self.locator.locate(conn, subjects, within=within)
            candidates = self._identities_in(conn, first, by_id, out)
            fresh = {rid: found - set(by_id[rid].identities) for rid, found in candidates.items()}
            if not any(fresh.values()):
                return out
            expanded = [
                s.model_copy(update={"identities": (*s.identities, *sorted(
                    fresh.get(s.request_id, set()), key=lambda i: (i.type.value, i.value)))})
                for s in subjects
            ]
            # The accounts a request's own identities lead to vouch for its rows; the rows a
            # candidate leads to must not vouch for themselves.
            second = self.locator.locate(conn, expanded, accounts=first.accounts, within=within)
        shared: set[tuple[str, Identity]] = set()
        for name, matched in second.matches.items():
            for key, pairs in matched.items():
                for rid, identity in pairs:
                    if identity not in fresh.get(rid, set()):
                        continue
                    # Whose a row is comes from the requests' own identities (the first
                    # look); a row only a candidate reaches is judged by the second, where
                    # two requests' candidates meeting in it make it neither's alone.
                    judge = first if key in first.owners[name] else second
                    if not judge.alone(name, key, rid):
                        shared.add((rid, identity))
        for rid, identities in fresh.items():
            for identity in identities:
                if (rid, identity) in shared:
                    _bump(out[rid].withheld, identity.type.value)
                else:
                    out[rid].found.add(identity)
        return out

    def _identities_in(
        self, conn: Connection, located: Located, subjects: Mapping[str, Subject],
        out: dict[str, Discovery],
    ) -> dict[str, set[Identity]]:
        """The identities in each request's own rows. Phone numbers are read in the
        system's region (the format it writes them in), else in the subject's."""
        found: dict[str, set[Identity]] = {rid: set() for rid in subjects}
        for name, mapped in self.system.tables.items():
            if not mapped.identities:
                continue
            mine = _own_rows(located, name)
            columns = [i.column for i in mapped.identities]
            columns += [i.provider_column for i in mapped.identities if i.provider_column]
            for key, row in self.locator.fetch(conn, name, list(mine), columns).items():
                for rid, spec in ((r, i) for r in mine[key] for i in mapped.identities):
                    raw = row[spec.column]
                    if raw is None or str(raw).strip() == "":
                        continue
                    text = str(raw)
                    if spec.provider_column is not None:
                        text = f"{row[spec.provider_column]}:{text}"
                    region = self.system.phone_region or subjects[rid].phone_region
                    try:
                        found[rid].add(Identity.read(spec.type, text, region))
                    except ValidationError:
                        _bump(out[rid].unreadable, spec.type.value)
        return found

    def birth_dates(self, subjects: Sequence[Subject]) -> dict[str, list[date]]:
        """The dates of birth in each subject's own rows (the data map's
        `birth_date_column`s; a row that is also someone else's says nothing of the
        subject's age). A value that is no date is left out."""
        out: dict[str, list[date]] = {s.request_id: [] for s in subjects}
        tables = {n: m.birth_date_column for n, m in self.system.tables.items()
                  if m.birth_date_column}
        if not tables:
            return out
        with self.engine.connect() as conn:
            located = self.locate(conn, subjects)
            for name, column in tables.items():
                mine = _own_rows(located, name)
                for key, row in self.locator.fetch(conn, name, list(mine), [column]).items():
                    born = as_date(row[column])
                    if born is None:
                        continue
                    for rid in mine[key]:
                        out[rid].append(born)
        return out

    def column_values(
        self, subjects: Sequence[Subject], table: str, column: str
    ) -> dict[str, list[Any]]:
        """The values of one column in each subject's rows (e.g. the object keys an uploads
        table lists), read before anything is erased. A row erasure keeps (shared with
        someone else) keeps what it lists too."""
        out: dict[str, list[Any]] = {s.request_id: [] for s in subjects}
        deletes = self.system.tables[table].deletes_rows(None)
        with self.engine.connect() as conn:
            located = self.locate(conn, subjects)
            keys = [k for k in located.owners[table] if not located.kept(table, k, deletes)]
            for key, row in self.locator.fetch(conn, table, keys, [column]).items():
                if row[column] is None:
                    continue
                for rid in located.owners[table][key]:
                    out[rid].append(row[column])
        return out

    # -- erasing ------------------------------------------------------------------------
    def _unread(self, scope: Scope, held: Mapping[str, Held]) -> frozenset[str]:
        """The tables whose rows erasure need not read before deleting them
        (`Locator.unread`: their rows decide nothing about any other row) and that it
        deletes from, or leaves alone (out of scope). None under a legal hold: which rows a
        hold keeps, and what they pin, is worked out from the rows read."""
        if not self.delete_returning or held:
            return frozenset()
        return frozenset(
            name for name in self.locator.unread
            if not _in_scope(mapped := self.system.tables[name], scope)
            or mapped.deletes_rows(scope)
        )

    def _delete_unread(
        self, conn: Connection, name: str, located: Located, outcomes: Mapping[str, Outcome]
    ) -> None:
        """Delete a deferred table's rows (`Locator.unread`) by the parent rows they point
        at, the statement returning what it deleted, so each request's counts are exact
        without reading the rows first. A row is someone else's exactly when its parent
        is (`Locator._leaf`): the rows under a foreign parent are only counted, kept."""
        edge = self.locator.parents[name][0]
        owners_at = located.deferred.get(name, {})
        foreign = located.foreign[edge.parent]
        table = self.tables[name]
        probe = [table.c[c] for c in edge.columns]
        width = len(probe)
        gone: dict[Anchor, int] = {}
        kept: dict[Anchor, int] = {}
        statements: set[str] = set()
        for anchors, into, erasing in (
            ([a for a in owners_at if a not in foreign], gone, True),
            ([a for a in owners_at if a in foreign], kept, False),
        ):
            values = [a[0] for a in anchors] if width == 1 else anchors
            for chunk in self.locator.chunks(values):
                where = self.locator.among(probe, chunk)
                if erasing:
                    stmt: Any = delete(table).where(where).returning(*probe)
                    statements.add(_statement_hash(stmt))
                else:
                    stmt = select(*probe).where(where)
                for row in conn.execute(stmt):
                    anchor = tuple(row)
                    into[anchor] = into.get(anchor, 0) + 1
        _tally_unread(outcomes, name, owners_at, gone, kept, sorted(statements))

    def _delete(self, conn: Connection, name: str, keys: list[Key], done: _Done) -> None:
        for chunk in self.locator.chunks(keys):
            stmt = delete(self.tables[name]).where(self.locator.pk_in(name, chunk))
            conn.execute(stmt)
            done.statements.add(_statement_hash(stmt))
        done.deleted.update(keys)

    def _anonymize(
        self, conn: Connection, name: str, keys: list[Key], located: Located, scope: Scope,
        pseudonymizers: Mapping[str, Pseudonymizer], done: _Done,
    ) -> None:
        mapped = self.system.tables[name]
        erasable = mapped.erasable_columns(scope)
        retained = mapped.retained_columns(scope)
        if not erasable and not retained:
            return
        table = self.tables[name]
        current = self.locator.fetch(conn, name, keys, [*erasable, *retained])
        updates = []
        for key, row in current.items():
            if reasons := _held_reasons(retained, row):
                done.retained[key] = reasons
            if not erasable:
                continue
            # A row two subjects of the batch share gets the first owner's pseudonyms:
            # deterministic, so a retry writes the same value.
            owner = min(located.owners[name][key])
            new = {
                c: transform(col, pseudonymizers.get(owner))(row[c])
                for c, col in erasable.items()
            }
            if any(new[c] != row[c] for c in erasable):
                done.anonymized.add(key)
                updates.append({
                    **{f"_pk_{c}": v for c, v in zip(mapped.primary_key, key, strict=True)},
                    **{f"_v_{c}": v for c, v in new.items()},
                })
        if not updates:
            return
        names = [*(f"_pk_{c}" for c in mapped.primary_key), *(f"_v_{c}" for c in erasable)]
        types = [table.c[c].type for c in [*mapped.primary_key, *erasable]]
        for chunk in self.locator.chunks(updates):
            # PostgreSQL: one statement per chunk, joined to the new values sent as arrays.
            values = listed(self.locator.dialect, types, [[u[n] for u in chunk] for n in names],
                            names)
            if values is not None:
                stmt = (
                    update(table)
                    .where(*[table.c[c] == values.c[f"_pk_{c}"] for c in mapped.primary_key])
                    .values({c: values.c[f"_v_{c}"] for c in erasable})
                )
                conn.execute(stmt)
                done.statements.add(_statement_hash(stmt))
                continue
            stmt = (
                update(table)
                .where(*[table.c[c] == bindparam(f"_pk_{c}") for c in mapped.primary_key])
                .values({c: bindparam(f"_v_{c}") for c in erasable})
            )
            # Elsewhere one statement, executed for the chunk's rows at once (executemany).
            conn.execute(stmt, chunk)
            done.statements.add(_statement_hash(stmt))

    def _restrict_held(
        self, conn: Connection, name: str, holding: HeldRows, stamp: datetime, done: _Done
    ) -> None:
        """Mark the held rows restricted where the table has a column for it: kept for
        the hold, and for nothing else."""
        column = self.system.tables[name].restriction_column
        keys = list(holding.held[name])
        if column is None or not keys:
            return
        table = self.tables[name]
        for chunk in self.locator.chunks(keys):
            stmt = (update(table).where(self.locator.pk_in(name, chunk), table.c[column].is_(None))
                    .values({column: stamp}))
            conn.execute(stmt)
            done.statements.add(_statement_hash(stmt))

    def _break_cycles(
        self, conn: Connection, located: Located, scope: Scope, holding: HeldRows
    ) -> None:
        """Rows about to be deleted that point at each other around a reference cycle
        cannot be deleted in any order while the keys are set: null the nullable ones
        first. (A cycle of NOT NULL keys needs deferrable constraints; the database's
        error is then recorded against the step.)"""
        for child, ref in cyclic_references(self.system):
            mapped = self.system.tables[child]
            if not mapped.deletes_rows(scope) or (child, ref.table) not in self._broken:
                continue  # one nullable key per cycle is enough to break it
            keys = [k for k in located.owners[child]
                    if not located.kept(child, k, True) and not holding.keeps(child, k, True)]
            table = self.tables[child]
            for chunk in self.locator.chunks(keys):
                conn.execute(
                    update(table)
                    .where(self.locator.pk_in(child, chunk))
                    .values({c: None for c in ref.columns})
                )


@dataclass
class _Done:
    """What happened to one table's rows in one call (erase) or what a look found (verify)."""

    deleted: set[Key] = field(default_factory=set)
    anonymized: set[Key] = field(default_factory=set)
    remaining: set[Key] = field(default_factory=set)
    retained: dict[Key, list[str]] = field(default_factory=dict)  # kept columns' reasons
    statements: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Left:
    """The rows of one table that erasure leaves as they are, worked out once per table
    (not per row and request): those someone else's rows keep (shared, or pinned where the
    table deletes rows), and those legal holds keep."""

    kept: Set[Key]
    held: Set[Key]
    holding: HeldRows
    table: str

    @classmethod
    def of(cls, located: Located, holding: HeldRows, table: str, deletes: bool) -> _Left:
        kept: Set[Key] = located.shared[table]
        held: Set[Key] = holding.held[table].keys()
        if deletes:
            kept = kept | located.pinned[table]
            held = held | holding.pinned[table].keys()
        return cls(kept, held, holding, table)

    def leaves(self, key: Key) -> bool:
        return key in self.kept or key in self.held


def _tally(
    part: PartOutcome, mine: list[Key], left: _Left, done: _Done, statements: list[str]
) -> None:
    """One request's counts in one table: what was found, done, left and kept, and why.
    `statements`: the table's, sorted once for every request."""
    part.found = len(mine)
    reasons: set[str] = set()
    shared = 0
    if left.kept or left.held or done.retained:
        for key in mine:
            if key in left.kept:
                shared += 1
            elif key in left.held:
                part.retained += 1
                reasons.update(left.holding.notes(left.table, key))
            elif key in done.retained:
                part.retained += 1
                reasons.update(done.retained[key])
    # `mine` lists each row once: the overlap is the count.
    part.deleted = len(done.deleted.intersection(mine)) if done.deleted else 0
    part.anonymized = len(done.anonymized.intersection(mine)) if done.anonymized else 0
    part.remaining = len(done.remaining.intersection(mine)) if done.remaining else 0
    part.retain_reasons = sorted(reasons)
    part.statements = list(statements)
    _note_shared(part, shared)


def _tally_unread(
    outcomes: Mapping[str, Outcome], name: str, owners_at: Mapping[Anchor, set[str]],
    gone: Mapping[Anchor, int], kept: Mapping[Anchor, int], statements: list[str],
) -> None:
    """Each request's counts in a deferred table, from the rows per parent the DELETE
    returned (`gone`) and those counted under a foreign parent (`kept`): each row counts
    for every request whose parent row it is."""
    deleted: dict[str, int] = defaultdict(int)
    shared: dict[str, int] = defaultdict(int)
    for counts, into in ((gone, deleted), (kept, shared)):
        for anchor, count in counts.items():
            for rid in owners_at[anchor]:
                into[rid] += count
    for rid, outcome in outcomes.items():
        part = outcome.part(name)
        part.found = deleted[rid] + shared[rid]
        part.deleted = deleted[rid]
        part.statements = list(statements)
        _note_shared(part, shared[rid])


def _note_shared(part: PartOutcome, count: int) -> None:
    if count:
        part.retained += count
        part.retain_reasons = sorted({*part.retain_reasons, SHARED_REASON})


def _held_reasons(retained: Mapping[str, Column], row: Mapping[str, Any]) -> list[str]:
    """The reasons of the retained columns (`Table.retained_columns`) that hold something
    in this row: a hold that kept nothing (an empty `cancelled_at` of an account never
    cancelled) did not apply."""
    return sorted({
        col.reason for c, col in retained.items() if col.reason and row.get(c) is not None
    })


def _own_rows(located: Located, table: str) -> dict[Key, list[str]]:
    """The rows of a table that are one subject's alone, each with the requests whose
    they are (several only when one subject asked twice in the batch)."""
    out: dict[Key, list[str]] = {}
    for key, who in located.owners[table].items():
        mine = sorted(rid for rid in who if located.alone(table, key, rid))
        if mine:
            out[key] = mine
    return out


def as_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()[:10])
        except ValueError:
            return None
    return None


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


# -- module helpers ---------------------------------------------------------------------
def resolve_url(name: str, system: SqlSystem) -> str:
    """The system's database URL: written in the data map (never with a password), read
    from the variable `url_env` names, or from the Prefect Secret block `url_block` names
    (read only here, when the connector is built)."""
    if system.url is not None:
        return system.url
    if system.url_block is not None:
        try:
            return read_secret_block(system.url_block, f"systems.{name}.url_block")
        except SecretBlockError as exc:
            raise SchemaMismatch(str(exc)) from None
    assert system.url_env is not None
    url = os.environ.get(system.url_env)
    if not url:
        raise SchemaMismatch(
            f"systems.{name}.url_env: environment variable {system.url_env} is not set"
        )
    return url


def _sccs(system: SqlSystem) -> list[list[str]]:
    """Strongly connected components of the reference graph (child -> parent), in an order
    where every component comes before the components it points at (Tarjan)."""
    graph = {n: [r.table for r in t.references] for n, t in system.tables.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    # Tarjan emits a component after everything it points at: reverse for child-first.
    return list(reversed(result))


def erase_order(system: SqlSystem, broken: frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    """Tables in an order where every row is deleted before the rows it points at. Inside a
    reference cycle, the `broken` references (child, parent) — keys nulled before the
    deletes — are ignored, which leaves an order for the rest."""
    order: list[str] = []
    for component in _sccs(system):
        members = set(component)
        before = {
            name: {
                r.table for r in system.tables[name].references
                if r.table in members and r.table != name and (name, r.table) not in broken
            }
            for name in component
        }
        # Kahn: a table goes once no remaining member still has to come before it, i.e.
        # once every table that points at it is placed.
        placed: list[str] = []
        pending = sorted(component)
        while pending:
            ready = [n for n in pending if not any(n in before[o] for o in pending if o != n)]
            nxt = ready[0] if ready else pending[0]  # an unbreakable cycle: any order fails
            placed.append(nxt)
            pending.remove(nxt)
        order += placed
    return order


def cyclic_references(system: SqlSystem) -> list[tuple[str, Any]]:
    """References that close a cycle (both ends in one strongly connected component)."""
    where = {name: i for i, comp in enumerate(_sccs(system)) for name in comp}
    sizes: dict[int, int] = defaultdict(int)
    for comp_id in where.values():
        sizes[comp_id] += 1
    out = []
    for child, table in system.tables.items():
        for ref in table.references:
            same = where[child] == where[ref.table]
            if same and (sizes[where[child]] > 1 or child == ref.table):
                out.append((child, ref))
    return out


def _in_scope(mapped: TableMap, scope: Scope) -> bool:
    return scope is None or bool(mapped.categories & scope)


def _statement_hash(stmt: Any) -> str:
    """Proof of what ran, without the values: the SQL text with its placeholders."""
    return hashlib.sha256(str(stmt).encode()).hexdigest()


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, datetime | date):
            out[key] = value.isoformat()
        elif isinstance(value, Decimal):
            out[key] = str(value)
        elif isinstance(value, bytes):
            out[key] = value.hex()
        else:
            out[key] = value
    json.dumps(out)  # fail here, not in the exporter, if a type slips through
    return out
