"""SQL connector: any SQLAlchemy database described by the data map.

How it finds a subject's rows: rows whose identity columns hold one of the subject's
identities, then, hop by hop along the declared references, rows that point at rows
already found, until nothing new turns up (self-references, multi-hop chains and tables
reachable two ways all fall out of the same fixpoint). Each hop is one statement per
reference for the whole batch.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    Table,
    bindparam,
    create_engine,
    delete,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import NoSuchTableError
from sqlalchemy.sql.elements import Tuple

from connectors.base import Outcome, Records, Scope
from dsrflow.anonymize import is_erased, transform
from dsrflow.crypto import Pseudonymizer
from dsrflow.datamap import SqlSystem
from dsrflow.datamap import Table as TableMap
from dsrflow.identities import Identity, IdentityType, Subject, phone_variants

CHUNK = 500  # bound parameters per IN list: far below SQLite's and PostgreSQL's limits

Key = tuple[Any, ...]


class SchemaMismatch(ValueError):
    """The data map names a table or column the database does not have."""


@dataclass
class Located:
    """Rows found for a batch: per table, primary key -> the requests that own the row,
    plus the values children's references point at."""

    owners: dict[str, dict[Key, set[str]]] = field(default_factory=lambda: defaultdict(dict))
    anchors: dict[str, dict[Key, Key]] = field(default_factory=lambda: defaultdict(dict))

    def rows_of(self, table: str, request_id: str) -> list[Key]:
        return [k for k, who in self.owners[table].items() if request_id in who]


class SqlConnector:
    kind = "sql"

    def __init__(self, name: str, system: SqlSystem, engine: Engine | None = None) -> None:
        self.name = name
        self.system = system
        self.engine = engine or create_engine(resolve_url(name, system), pool_pre_ping=True)
        self.tables = self._reflect()
        self._broken = frozenset(
            (child, ref.table)
            for child, ref in cyclic_references(system)
            if all(self.tables[child].c[c].nullable for c in ref.columns)
        )
        self._order = erase_order(system, self._broken)

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

    # -- contract -----------------------------------------------------------------------
    def collect(self, subjects: Sequence[Subject], scope: Scope) -> dict[str, Records]:
        records: dict[str, Records] = {s.request_id: {} for s in subjects}
        with self.engine.connect() as conn:
            located = self.locate(conn, subjects)
            for name, mapped in self.system.tables.items():
                wanted = [
                    c for c, col in mapped.columns.items()
                    if scope is None or col.category in scope or c in mapped.primary_key
                ]
                if not located.owners[name] or not _in_scope(mapped, scope):
                    continue
                rows = self._fetch(conn, name, list(located.owners[name]), wanted)
                for key, row in rows.items():
                    for rid in located.owners[name][key]:
                        records[rid].setdefault(name, []).append(_jsonable(row))
        return records

    def erase(
        self,
        subjects: Sequence[Subject],
        scope: Scope,
        pseudonymizers: Mapping[str, Pseudonymizer],
    ) -> dict[str, Outcome]:
        outcomes = {s.request_id: Outcome() for s in subjects}
        with self.engine.begin() as conn:
            located = self.locate(conn, subjects)
            for rid, outcome in outcomes.items():
                for name, mapped in self.system.tables.items():
                    if _in_scope(mapped, scope):
                        outcome.part(name).found = len(located.rows_of(name, rid))
            self._break_cycles(conn, located, scope)
            for name in self._order:
                mapped = self.system.tables[name]
                keys = list(located.owners[name])
                if not keys:
                    continue
                if mapped.deletes_rows(scope):
                    self._delete(conn, name, keys, located, outcomes)
                else:
                    self._anonymize(conn, name, keys, located, scope, pseudonymizers, outcomes)
        return outcomes

    def verify(self, subjects: Sequence[Subject], scope: Scope) -> dict[str, Outcome]:
        outcomes = {s.request_id: Outcome() for s in subjects}
        with self.engine.connect() as conn:
            located = self.locate(conn, subjects)
            for name, mapped in self.system.tables.items():
                keys = list(located.owners[name])
                if not keys or not _in_scope(mapped, scope):
                    continue
                erasable = mapped.erasable_columns(scope)
                if mapped.deletes_rows(scope):
                    left = set(keys)
                else:
                    rows = self._fetch(conn, name, keys, list(erasable))
                    left = {
                        k for k, row in rows.items()
                        if not all(is_erased(erasable[c], row[c]) for c in erasable)
                    }
                for rid, outcome in outcomes.items():
                    mine = located.rows_of(name, rid)
                    part = outcome.part(name)
                    part.found = len(mine)
                    part.remaining = sum(1 for k in mine if k in left)
                    if mapped.retained_columns(scope):
                        part.retained = len(mine)
                        part.retain_reasons = _reasons(mapped, scope)
        return outcomes

    def rectify(self, subject: Subject, corrections: Mapping[str, str]) -> Outcome:
        """Apply `table.column -> value` corrections to the subject's rows."""
        outcome = Outcome()
        by_table: dict[str, dict[str, str]] = defaultdict(dict)
        for target, value in corrections.items():
            table, column = target.split(".", 1)
            by_table[table][column] = value
        with self.engine.begin() as conn:
            located = self.locate(conn, [subject])
            for name, values in by_table.items():
                keys = located.rows_of(name, subject.request_id)
                part = outcome.part(name)
                part.found = len(keys)
                for chunk in _chunks(keys):
                    stmt = update(self.tables[name]).where(self._pk_in(name, chunk)).values(values)
                    part.anonymized += conn.execute(stmt).rowcount
                    part.statements.append(_statement_hash(stmt))
        return outcome

    def restrict(self, subjects: Sequence[Subject]) -> dict[str, Outcome]:
        """Mark the subjects' rows as restricted where the data map names a column for it."""
        outcomes = {s.request_id: Outcome() for s in subjects}
        stamp = datetime.now(UTC)
        with self.engine.begin() as conn:
            located = self.locate(conn, subjects)
            for name, mapped in self.system.tables.items():
                column = mapped.restriction_column
                keys = list(located.owners[name])
                if column is None or not keys:
                    continue
                table = self.tables[name]
                for chunk in _chunks(keys):
                    stmt = (
                        update(table)
                        .where(self._pk_in(name, chunk), table.c[column].is_(None))
                        .values({column: stamp})
                    )
                    conn.execute(stmt)
                for rid, outcome in outcomes.items():
                    part = outcome.part(name)
                    part.found = part.retained = len(located.rows_of(name, rid))
                    part.retain_reasons = ["processing restricted at the subject's request"]
        return outcomes

    def discover(self, subjects: Sequence[Subject]) -> dict[str, set[Identity]]:
        """Account ids (identity columns of type user_id) in the rows the subjects'
        identities lead to: a ticket that gave only an email still reaches objects and logs
        keyed by user id, and verification still finds the account after its email was
        pseudonymized. Device ids are not propagated: a device may be shared by accounts."""
        found: dict[str, set[Identity]] = {s.request_id: set() for s in subjects}
        with self.engine.connect() as conn:
            located = self.locate(conn, subjects)
            for name, mapped in self.system.tables.items():
                columns = [i.column for i in mapped.identities if i.type is IdentityType.USER_ID]
                keys = list(located.owners[name])
                if not columns or not keys:
                    continue
                for key, row in self._fetch(conn, name, keys, columns).items():
                    for column in columns:
                        if row[column] is None:
                            continue
                        identity = Identity(type=IdentityType.USER_ID, value=str(row[column]))
                        for rid in located.owners[name][key]:
                            found[rid].add(identity)
        return found

    def column_values(
        self, subjects: Sequence[Subject], table: str, column: str
    ) -> dict[str, list[Any]]:
        """The values of one column in each subject's rows (e.g. the object keys an uploads
        table lists), read before anything is erased."""
        out: dict[str, list[Any]] = {s.request_id: [] for s in subjects}
        with self.engine.connect() as conn:
            located = self.locate(conn, subjects)
            rows = self._fetch(conn, table, list(located.owners[table]), [column])
            for key, row in rows.items():
                if row[column] is None:
                    continue
                for rid in located.owners[table][key]:
                    out[rid].append(row[column])
        return out

    # -- locating -----------------------------------------------------------------------
    def locate(self, conn: Connection, subjects: Sequence[Subject]) -> Located:
        located = Located()
        frontier: dict[str, set[Key]] = defaultdict(set)
        for name, mapped in self.system.tables.items():
            for key, owners in self._match_identities(conn, name, mapped, subjects):
                if self._own(located, conn, name, key, owners):
                    frontier[name].add(key)
        children = _children(self.system)
        while frontier:
            parent, keys = frontier.popitem()
            for child, child_cols, parent_cols in children.get(parent, []):
                anchors: dict[Key, set[str]] = defaultdict(set)
                for key in keys:
                    anchor = self._anchor(conn, located, parent, key, parent_cols)
                    if None not in anchor:
                        anchors[anchor] |= located.owners[parent][key]
                for child_key, anchor in self._rows_pointing_at(
                    conn, child, child_cols, list(anchors)
                ):
                    if self._own(located, conn, child, child_key, anchors[anchor]):
                        frontier[child].add(child_key)
        return located

    def _own(
        self, located: Located, conn: Connection, table: str, key: Key, owners: set[str]
    ) -> bool:
        """Record owners of a row; True if that is news (the row must be propagated)."""
        if not owners:
            return False
        current = located.owners[table].setdefault(key, set())
        if owners <= current:
            return False
        current |= owners
        return True

    def _anchor(
        self, conn: Connection, located: Located, table: str, key: Key, columns: list[str]
    ) -> Key:
        """The values of `columns` in the row `key` (usually just its primary key)."""
        pk = self.system.tables[table].primary_key
        if columns == pk:
            return key
        cache = located.anchors[f"{table}:{','.join(columns)}"]
        if key not in cache:
            row = conn.execute(
                select(*[self.tables[table].c[c] for c in columns]).where(
                    self._pk_in(table, [key])
                )
            ).one()
            cache[key] = tuple(row)
        return cache[key]

    def _match_identities(
        self, conn: Connection, name: str, mapped: TableMap, subjects: Sequence[Subject]
    ) -> Iterator[tuple[Key, set[str]]]:
        table = self.tables[name]
        pk_cols = [table.c[c] for c in mapped.primary_key]
        for ident in mapped.identities:
            column = table.c[ident.column]
            wanted: dict[Any, set[str]] = defaultdict(set)
            for subject in subjects:
                for value in subject.values(ident.type):
                    for variant in _lookup_values(ident.type, value, column):
                        wanted[variant].add(subject.request_id)
            if not wanted:
                continue
            if ident.type is IdentityType.EMAIL:
                probe: Any = func.lower(func.trim(column))
            elif ident.type is IdentityType.THIRD_PARTY:
                assert ident.provider_column is not None
                probe = tuple_(func.lower(table.c[ident.provider_column]), column)
            else:
                probe = column
            probe_cols = _probe_columns(probe)
            for chunk in _chunks(list(wanted)):
                rows = conn.execute(select(*pk_cols, *probe_cols).where(probe.in_(chunk)))
                width = len(pk_cols)
                for row in rows:
                    matched = tuple(row[width:])
                    probed: Any = matched[0] if len(matched) == 1 else matched
                    yield tuple(row[:width]), set(wanted.get(probed, set()))

    def _rows_pointing_at(
        self, conn: Connection, child: str, columns: list[str], anchors: list[Key]
    ) -> Iterator[tuple[Key, Key]]:
        table = self.tables[child]
        pk_cols = [table.c[c] for c in self.system.tables[child].primary_key]
        ref_cols = [table.c[c] for c in columns]
        probe = ref_cols[0] if len(ref_cols) == 1 else tuple_(*ref_cols)
        values: list[Any] = [a[0] for a in anchors] if len(ref_cols) == 1 else anchors
        width = len(pk_cols)
        for chunk in _chunks(values):
            for row in conn.execute(select(*pk_cols, *ref_cols).where(probe.in_(chunk))):
                yield tuple(row[:width]), tuple(row[width:])

    # -- erasing ------------------------------------------------------------------------
    def _delete(
        self, conn: Connection, name: str, keys: list[Key], located: Located,
        outcomes: dict[str, Outcome],
    ) -> None:
        statements = set()
        for chunk in _chunks(keys):
            stmt = delete(self.tables[name]).where(self._pk_in(name, chunk))
            conn.execute(stmt)
            statements.add(_statement_hash(stmt))
        for rid, outcome in outcomes.items():
            part = outcome.part(name)
            part.deleted = len(located.rows_of(name, rid))
            part.statements = sorted(statements)

    def _anonymize(
        self, conn: Connection, name: str, keys: list[Key], located: Located, scope: Scope,
        pseudonymizers: Mapping[str, Pseudonymizer], outcomes: dict[str, Outcome],
    ) -> None:
        mapped = self.system.tables[name]
        erasable = mapped.erasable_columns(scope)
        retained = mapped.retained_columns(scope)
        changed: set[Key] = set()
        statements: set[str] = set()
        if erasable:
            table = self.tables[name]
            current = self._fetch(conn, name, keys, list(erasable))
            updates = []
            for key, row in current.items():
                # A row two subjects of the batch share gets the first owner's pseudonyms:
                # deterministic, so a retry writes the same value.
                owner = min(located.owners[name][key])
                new = {
                    c: transform(col, pseudonymizers.get(owner))(row[c])
                    for c, col in erasable.items()
                }
                if any(new[c] != row[c] for c in erasable):
                    changed.add(key)
                    updates.append({**{f"_pk_{c}": v for c, v in zip(
                        mapped.primary_key, key, strict=True)}, **{f"_v_{c}": v for c, v in
                                                                  new.items()}})
            if updates:
                stmt = (
                    update(table)
                    .where(*[table.c[c] == bindparam(f"_pk_{c}") for c in mapped.primary_key])
                    .values({c: bindparam(f"_v_{c}") for c in erasable})
                )
                # One statement, executed for all changed rows at once (executemany).
                conn.execute(stmt, updates)
                statements.add(_statement_hash(stmt))
        reasons = _reasons(mapped, scope)
        for rid, outcome in outcomes.items():
            mine = located.rows_of(name, rid)
            part = outcome.part(name)
            part.anonymized = sum(1 for k in mine if k in changed)
            if retained:
                part.retained = len(mine)
                part.retain_reasons = reasons
            part.statements = sorted(statements)

    def _break_cycles(self, conn: Connection, located: Located, scope: Scope) -> None:
        """Rows about to be deleted that point at each other around a reference cycle
        cannot be deleted in any order while the keys are set: null the nullable ones
        first. (A cycle of NOT NULL keys needs deferrable constraints; the database's
        error is then recorded against the step.)"""
        for child, ref in cyclic_references(self.system):
            mapped = self.system.tables[child]
            keys = list(located.owners[child])
            if not keys or not mapped.deletes_rows(scope):
                continue
            if (child, ref.table) not in self._broken:
                continue  # one nullable key per cycle is enough to break it
            table = self.tables[child]
            for chunk in _chunks(keys):
                conn.execute(
                    update(table)
                    .where(self._pk_in(child, chunk))
                    .values({c: None for c in ref.columns})
                )

    # -- helpers ------------------------------------------------------------------------
    def _pk_in(self, name: str, keys: Sequence[Key]) -> ColumnElement[bool]:
        table = self.tables[name]
        pk = [table.c[c] for c in self.system.tables[name].primary_key]
        if len(pk) == 1:
            return pk[0].in_([k[0] for k in keys])
        return tuple_(*pk).in_(list(keys))

    def _fetch(
        self, conn: Connection, name: str, keys: list[Key], columns: Iterable[str]
    ) -> dict[Key, dict[str, Any]]:
        table = self.tables[name]
        pk = self.system.tables[name].primary_key
        wanted = list(dict.fromkeys([*pk, *columns]))
        out: dict[Key, dict[str, Any]] = {}
        for chunk in _chunks(keys):
            stmt = select(*[table.c[c] for c in wanted]).where(self._pk_in(name, chunk))
            for row in conn.execute(stmt):
                data = dict(row._mapping)
                out[tuple(data[c] for c in pk)] = data
        return out


# -- module helpers ---------------------------------------------------------------------
def resolve_url(name: str, system: SqlSystem) -> str:
    if system.url is not None:
        return system.url
    assert system.url_env is not None
    url = os.environ.get(system.url_env)
    if not url:
        raise SchemaMismatch(
            f"systems.{name}.url_env: environment variable {system.url_env} is not set"
        )
    return url


def _probe_columns(probe: Any) -> list[Any]:
    """The columns to select to read back what a probe matched: a tuple's members, or the
    expression itself (e.g. lower(trim(email)), so the value compares normalized)."""
    return list(probe.clauses) if isinstance(probe, Tuple) else [probe]


def _lookup_values(kind: IdentityType, value: str, column: Any) -> list[Any]:
    if kind is IdentityType.PHONE:
        return list(phone_variants(value))
    if kind is IdentityType.THIRD_PARTY:
        provider, _, openid = value.partition(":")
        return [(provider, openid)]
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return [value]
    if python_type is int:
        # An id typed as text matches an integer key; one that is not a number matches
        # nothing (rather than failing the batch).
        return [int(value)] if value.lstrip("-").isdigit() else []
    return [value]


def _children(system: SqlSystem) -> dict[str, list[tuple[str, list[str], list[str]]]]:
    """parent -> [(child, child columns, parent columns)]"""
    out: dict[str, list[tuple[str, list[str], list[str]]]] = defaultdict(list)
    for child, table in system.tables.items():
        for ref in table.references:
            parent_cols = ref.to_columns or system.tables[ref.table].primary_key
            out[ref.table].append((child, list(ref.columns), list(parent_cols)))
    return out


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


def _reasons(mapped: TableMap, scope: Scope) -> list[str]:
    return sorted({c.reason for c in mapped.retained_columns(scope).values() if c.reason})


def _chunks(items: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), CHUNK):
        yield list(items[start : start + CHUNK])


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
