"""Whose rows are whose in a SQL system: the rows a batch of subjects owns, and which of
them also belong to someone the request is not about.

Finding. A subject's rows are the rows whose identity columns hold one of their
identities, then, hop by hop along the data map's references, the rows that point at rows
already found, until nothing new turns up (self-references, multi-hop chains and tables
reachable two ways fall out of the same fixpoint). Each hop is one statement per reference
for the whole batch. Phones are looked for in the spellings of the subject's region only
(`dsrflow.identities.phone_variants`), IP addresses in their usual text forms.

Sharing. A row found this way can also belong to someone else: an order found because it
ships to the subject's address is the buyer's order; a household's card is every member's.
A found row is *foreign* when

  (a) it points, through a `shared: keep` reference, at a row that was not found for the
      batch and belongs to someone (it holds an identity, or points the same way at a row
      that does);
  (b) it holds an account id (a `user_id` identity column) that is not an account of the
      requests it was found for (their own ids, and the ids in the rows their account ids,
      emails, phones or third-party logins matched directly — a device id or an IP address
      is often several people's, and vouches for no account). Such a row does not lead on:
      the rows that point at it are that account's, and are not looked at; or
  (c) it points, through a `shared: keep` reference, at a found row that is foreign; or
      every found row it points at is foreign and no identity of the request matched it
      (found only by way of other people's rows, whatever the references say).

A foreign row is kept untouched, and so is every found row a foreign row points at through
a `shared: keep` reference (the address on the other person's order): together they are
*shared*. A found row that a kept row still points at is *pinned*: it is not deleted (the
reference needs its target) but its columns are anonymized as the data map says. Rows owned
only by requests of the batch are erased once every owner is in it: the batch is the set of
subjects of one call. A `shared: erase` reference never makes a row shared (a follow edge
goes with either end); the data owner decides that in the data map.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Numeric,
    String,
    Table,
    bindparam,
    false,
    func,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import NullType, TypeEngine

from dsrflow.datamap import Reference, SqlSystem
from dsrflow.datamap import Table as TableMap
from dsrflow.identities import (
    ACCOUNT_GRADE,
    Identity,
    IdentityType,
    Subject,
    ip_variants,
    phone_variants,
)

CHUNK = 500  # bound parameters per IN list: far below SQLite's and PostgreSQL's limits
# Values per statement on PostgreSQL, where a list is one array parameter per column (see
# `among`): a batch of thousands of subjects is a few statements per table, not hundreds.
ARRAY_CHUNK = 50_000
SHARED_REASON = "shared with another data subject"
_INTEGER = re.compile(r"-?[0-9]{1,19}")  # ASCII digits only: `²` is a digit to str.isdigit

Key = tuple[Any, ...]
Anchor = tuple[Any, ...]
Node = tuple[str, tuple[str, ...], Anchor]  # a row as a reference names it: table, columns, values


@dataclass(frozen=True)
class Edge:
    """One declared reference: rows of `child` point at rows of `ref.table`. What is
    derived from the reference is worked out once: it is read for every found row."""

    child: str
    ref: Reference
    parent_columns: tuple[str, ...]
    parent: str = field(init=False, compare=False)
    columns: tuple[str, ...] = field(init=False, compare=False)
    # Whether the two ends of this reference being different people shares a row.
    keeps: bool = field(init=False, compare=False)
    target: tuple[str, tuple[str, ...]] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parent", self.ref.table)
        object.__setattr__(self, "columns", tuple(self.ref.columns))
        object.__setattr__(self, "keeps", self.ref.shared == "keep")
        object.__setattr__(self, "target", (self.ref.table, self.parent_columns))


# Per table and found row: the references it holds (non-null), and what they point at.
Points = dict[str, dict[Key, Sequence[tuple["Edge", Anchor]]]]


@dataclass
class Located:
    """Rows found for a batch, per table: primary key -> the requests that own the row;
    which rows an identity matched directly (and which identity); which rows also belong to
    someone outside the batch, and which must be kept because of them."""

    owners: dict[str, dict[Key, set[str]]] = field(default_factory=lambda: defaultdict(dict))
    matches: dict[str, dict[Key, set[tuple[str, Identity]]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    foreign: dict[str, set[Key]] = field(default_factory=lambda: defaultdict(set))
    shared: dict[str, set[Key]] = field(default_factory=lambda: defaultdict(set))
    pinned: dict[str, set[Key]] = field(default_factory=lambda: defaultdict(set))
    accounts: dict[str, set[str]] = field(default_factory=dict)  # request -> its account ids
    # Tables `locate` was told not to read (`Locator.unread`): per table, the values their
    # one reference points at (the parent's primary key) -> the requests whose rows those
    # are. Their rows are found by the statement that erases them.
    deferred: dict[str, dict[Anchor, set[str]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    _by_request: dict[str, dict[str, list[Key]]] | None = field(default=None, repr=False)
    _by_accounts: dict[frozenset[str], frozenset[str]] | None = field(default=None, repr=False)

    def rows_of(self, table: str, request_id: str) -> list[Key]:
        """One request's rows of a table (an index built once: no scan of the batch)."""
        if self._by_request is None:
            index: dict[str, dict[str, list[Key]]] = defaultdict(lambda: defaultdict(list))
            for name, rows in self.owners.items():
                for key, who in rows.items():
                    for rid in who:
                        index[name][rid].append(key)
            self._by_request = index
        return self._by_request.get(table, {}).get(request_id, [])

    def kept(self, table: str, key: Key, deletes: bool) -> bool:
        """Whether erasure must leave the row: shared, or pinned in a row-deleting table."""
        return key in self.shared[table] or (deletes and key in self.pinned[table])

    def alone(self, table: str, key: Key, request_id: str) -> bool:
        """Whether the row is the request's and nobody else's, in or outside the batch. Its
        other owners in the batch, if any, must be the same person: requests whose
        account-grade identities lead to the same accounts (a subject who asked twice, by
        two identities). What a request learns must not depend on what else is in its
        batch."""
        if key in self.foreign[table]:
            return False
        owners = self.owners[table].get(key, set())
        return request_id in owners and owners <= self.same_person(request_id)

    def same_person(self, request_id: str) -> frozenset[str]:
        """The requests of the batch that lead to exactly the same accounts as this one
        (itself included; only itself when it leads to none)."""
        mine = self.accounts.get(request_id)
        if not mine:
            return frozenset({request_id})
        if self._by_accounts is None:  # built once: no scan of the batch per request
            index: dict[frozenset[str], set[str]] = defaultdict(set)
            for rid, ids in self.accounts.items():
                if ids:
                    index[frozenset(ids)].add(rid)
            self._by_accounts = {k: frozenset(v) for k, v in index.items()}
        return self._by_accounts.get(frozenset(mine), frozenset({request_id}))


class Locator:
    """Finds a batch's rows in one SQL system and decides which are shared."""

    def __init__(
        self, system: SqlSystem, tables: Mapping[str, Table], dialect: str | None = None
    ) -> None:
        self.system = system
        self.tables = tables
        self.dialect = dialect
        self.chunk = ARRAY_CHUNK if dialect == "postgresql" else CHUNK
        self.edges = [
            Edge(child, ref, tuple(ref.to_columns or system.tables[ref.table].primary_key))
            for child, mapped in system.tables.items()
            for ref in mapped.references
        ]
        self.children: dict[str, list[Edge]] = defaultdict(list)
        self.parents: dict[str, list[Edge]] = defaultdict(list)
        for edge in self.edges:
            self.children[edge.parent].append(edge)
            self.parents[edge.child].append(edge)
        self.account_columns = {
            name: [i.column for i in mapped.identities if i.type is IdentityType.USER_ID]
            for name, mapped in system.tables.items()
        }
        # The columns a table's references are made of: read with a row when it is found,
        # so that what it points at need not be read again (`_share`).
        self.ref_columns = {
            name: list(dict.fromkeys(c for e in self.parents.get(name, []) for c in e.columns))
            for name in system.tables
        }
        # What decides whose the rows holding identities are, and whether they are someone
        # else's too (identity discovery asks no more): those tables and every table they
        # point at, transitively. Whose a row is, and whether it is foreign, flows from the
        # rows it points at and from its own columns, never from the rows pointing at it.
        self.identity_tables = self.upstream(
            name for name, mapped in system.tables.items() if mapped.identities
        )
        self.unread = frozenset(name for name in system.tables if self._leaf(name))

    def _leaf(self, name: str) -> bool:
        """Whether whose a table's rows are, and whether they are someone else's, follows
        from the one row each points at, and decides nothing about any other row: no
        identity of its own, no account id, one reference, to its parent's primary key
        (one parent row per value), and no reference pointing at it. Such a row is
        foreign exactly when its parent is ((c): through a `keep` reference, or found only
        by way of other people's rows), is never pinned, and makes no other row shared:
        its rows need not be read to judge the rest (`locate(defer=…)`)."""
        mapped = self.system.tables[name]
        edges = self.parents.get(name, [])
        if mapped.identities or self.account_columns.get(name) or len(edges) != 1:
            return False
        edge = edges[0]
        return (not self.children.get(name) and edge.parent != name
                and list(edge.parent_columns) == self.system.tables[edge.parent].primary_key)

    def touch(self, conn: Connection, tables: Iterable[str]) -> None:
        """Ask each table for the columns a look-up reads, and no row: a missing table or
        column, or a SELECT the database refuses, fails here as it would in a look-up."""
        for name in tables:
            table = self.tables[name]
            columns = dict.fromkeys([*self.system.tables[name].primary_key,
                                     *self.ref_columns[name], *self.account_columns[name]])
            conn.execute(select(*[table.c[c] for c in columns]).where(false()))

    def upstream(self, tables: Iterable[str]) -> frozenset[str]:
        """The tables and every table they point at, transitively."""
        seen = set(tables)
        pending = list(seen)
        while pending:
            for edge in self.parents.get(pending.pop(), []):
                if edge.parent not in seen:
                    seen.add(edge.parent)
                    pending.append(edge.parent)
        return frozenset(seen)

    def locate(
        self, conn: Connection, subjects: Sequence[Subject],
        accounts: Mapping[str, set[str]] | None = None,
        within: Collection[str] | None = None, defer: Collection[str] = (),
    ) -> Located:
        """The subjects' rows and which of them are shared. `accounts` fixes each request's
        account ids instead of reading them from the rows its identities match (identity
        discovery: a candidate identity must not vouch for the account it leads to).
        `within`: only these tables are looked at; closed under `upstream`, their rows come
        out as a look at every table would find and judge them. `defer`: tables of
        `unread` whose rows are not read; `Located.deferred` says which parent rows they
        would have been looked for under, and for whom."""
        if not self.unread.issuperset(defer):
            raise ValueError(f"rows of {sorted(set(defer) - self.unread)} decide others'")
        located = Located()
        read = self._find(conn, subjects, located, accounts, within, defer)
        self._share(conn, located, read)
        return located

    # -- finding ------------------------------------------------------------------------
    def _find(
        self, conn: Connection, subjects: Sequence[Subject], located: Located,
        accounts: Mapping[str, set[str]] | None, within: Collection[str] | None,
        defer: Collection[str] = (),
    ) -> Points:
        """Fills `located` with the rows found; returns what they point at, as read on the
        way (not every found row's: `_outgoing` reads the rest)."""
        frontier: dict[str, set[Key]] = defaultdict(set)
        read: Points = defaultdict(dict)
        # The batch's identities by type, once: each identity column looks for one type.
        by_type: dict[IdentityType, list[tuple[Subject, Identity]]] = defaultdict(list)
        for subject in subjects:
            for identity in subject.identities:
                by_type[identity.type].append((subject, identity))
        for name, mapped in self.system.tables.items():
            if within is not None and name not in within:
                continue
            for key, rid, identity in self._match_identities(conn, name, mapped, by_type):
                located.matches[name].setdefault(key, set()).add((rid, identity))
                if _own(located, name, key, {rid}):
                    frontier[name].add(key)
        held: dict[str, dict[Key, set[str]]] = defaultdict(dict)
        for name, matched in located.matches.items():
            if self.account_columns.get(name):
                columns = self.account_columns[name]
                refs = self.ref_columns[name]
                for key, row in self.fetch(conn, name, list(matched), [*columns, *refs]).items():
                    held[name][key] = {str(row[c]) for c in columns if row[c] is not None}
                    read[name][key] = self._points(name, row)
        located.accounts = (
            {rid: set(ids) for rid, ids in accounts.items()} if accounts is not None
            else self._accounts(subjects, located, held)
        )
        for name, rows in held.items():
            for key, holds in rows.items():
                # (b) for rows an identity matched: a device id or an IP address in another
                # account's row makes that row neither the subject's nor a way on.
                theirs = self._whose(located, holds, located.owners[name][key])
                if theirs:
                    located.owners[name][key] = theirs
                else:
                    located.foreign[name].add(key)
                    frontier[name].discard(key)
        while frontier:
            parent, keys = frontier.popitem()
            for edge in self.children.get(parent, []):
                if within is not None and edge.child not in within:
                    continue
                # Owners' sets are never changed once recorded (`_own`): an anchor that is
                # one row's (the usual: a primary key) shares that row's set.
                anchors: dict[Anchor, set[str]] = {}
                for key, anchor in self.anchors(conn, parent, keys, edge.parent_columns).items():
                    if None not in anchor:
                        mine = located.owners[parent][key]
                        have = anchors.get(anchor)
                        anchors[anchor] = mine if have is None else have | mine
                if edge.child in defer:
                    _defer(located.deferred[edge.child], anchors)
                    continue
                known = read[edge.child]
                leads = bool(self.children.get(edge.child))  # else nothing to follow from it
                for child_key, anchor, ids, points in self._rows_pointing_at(
                        conn, edge, list(anchors)):
                    known[child_key] = points
                    if self._reach(located, edge.child, child_key, anchors[anchor], ids) \
                            and leads:
                        frontier[edge.child].add(child_key)
        return read

    def _reach(
        self, located: Located, table: str, key: Key, owners: set[str], ids: set[str] | None
    ) -> bool:
        """A row reached from rows of `owners`: True if it must lead on (news). A row that
        holds account ids belongs only to the requests whose accounts those are (b); if
        none, it is another account's: found (so what points at it is judged), foreign,
        and a dead end."""
        if not ids:
            return _own(located, table, key, owners)
        theirs = self._whose(located, ids, owners)
        if theirs:
            if key in located.foreign[table]:  # reached before only by others: now ours
                located.foreign[table].discard(key)
                located.owners[table][key] = set()
            return _own(located, table, key, theirs)
        if key not in located.owners[table]:
            _own(located, table, key, owners)
            located.foreign[table].add(key)
        return False

    @staticmethod
    def _whose(located: Located, ids: set[str], owners: Iterable[str]) -> set[str]:
        """The owners whose accounts include every account id a row holds."""
        return {r for r in owners if ids <= located.accounts.get(r, set())}

    def _match_identities(
        self, conn: Connection, name: str, mapped: TableMap,
        by_type: Mapping[IdentityType, list[tuple[Subject, Identity]]],
    ) -> Iterator[tuple[Key, str, Identity]]:
        table = self.tables[name]
        pk_cols = [table.c[c] for c in mapped.primary_key]
        for spec in mapped.identities:
            column = table.c[spec.column]
            wanted: dict[Any, set[tuple[str, Identity]]] = defaultdict(set)
            for subject, identity in by_type.get(spec.type, ()):
                region = self.system.phone_region or subject.phone_region
                for value in _lookup_values(identity, column, region):
                    wanted[value].add((subject.request_id, identity))
            if not wanted:
                continue
            probe: ColumnElement[Any] = column
            probe_cols: list[ColumnElement[Any]] = [column]
            if spec.type is IdentityType.EMAIL:
                probe = type_coerce(func.lower(func.trim(column)), column.type)
                probe_cols = [probe]
            elif spec.type is IdentityType.THIRD_PARTY:
                assert spec.provider_column is not None
                # Only the id goes to the server, one value each (a hashed look-up there);
                # the provider is compared here, through `wanted`. A list of (provider,
                # id) pairs would be a row comparison per pair and per row of the table.
                probe_cols = [func.lower(table.c[spec.provider_column]), column]
            width = len(pk_cols)
            values = list(dict.fromkeys(
                openid for _, openid in wanted) if spec.type is IdentityType.THIRD_PARTY
                else wanted)
            for chunk in self.chunks(values):
                stmt = select(*pk_cols, *probe_cols).where(self.among([probe], chunk))
                for row in conn.execute(stmt):
                    matched = tuple(row[width:])
                    probed: Any = matched[0] if len(matched) == 1 else matched
                    for rid, identity in wanted.get(probed, ()):
                        yield tuple(row[:width]), rid, identity

    def _rows_pointing_at(
        self, conn: Connection, edge: Edge, anchors: list[Anchor]
    ) -> Iterator[tuple[Key, Anchor, set[str] | None, Sequence[tuple[Edge, Anchor]]]]:
        """Rows of the edge's child table that point at `anchors`: their key, what they
        point at, the account ids they hold (None: the table holds none), and every
        reference they hold (what `_share` needs). Read by position, and a row that holds
        no other reference shares the one tuple of its anchor: this runs for every row a
        batch owns."""
        table = self.tables[edge.child]
        pk = self.system.tables[edge.child].primary_key
        accounts = self.account_columns.get(edge.child, [])
        names = list(dict.fromkeys([*pk, *edge.columns, *accounts,
                                    *self.ref_columns[edge.child]]))
        at = {c: i for i, c in enumerate(names)}
        key_of = _getter([at[c] for c in pk])
        anchor_of = _getter([at[c] for c in edge.columns])
        account_at = [at[c] for c in accounts]
        others = [(e, _getter([at[c] for c in e.columns]))
                  for e in self.parents.get(edge.child, []) if e is not edge]
        values: list[Any] = [a[0] for a in anchors] if len(edge.columns) == 1 else anchors
        ref_cols = [table.c[c] for c in edge.columns]
        alone: dict[Anchor, tuple[tuple[Edge, Anchor], ...]] = {}
        for chunk in self.chunks(values):
            stmt = select(*[table.c[c] for c in names]).where(self.among(ref_cols, chunk))
            for row in conn.execute(stmt):
                anchor = anchor_of(row)  # not null: it matched
                points: Sequence[tuple[Edge, Anchor]]
                if others:
                    points = [(edge, anchor), *(
                        (other, pointed) for other, get in others
                        if None not in (pointed := get(row)))]
                else:
                    points = alone.get(anchor) or alone.setdefault(anchor, ((edge, anchor),))
                ids = ({str(row[i]) for i in account_at if row[i] is not None}
                       if accounts else None)
                yield key_of(row), anchor, ids, points

    def _points(self, table: str, row: Mapping[str, Any]) -> list[tuple[Edge, Anchor]]:
        """What a row points at: its non-null references."""
        return [
            (e, anchor) for e in self.parents.get(table, [])
            if None not in (anchor := tuple(row[c] for c in e.columns))
        ]

    # -- sharing ------------------------------------------------------------------------
    def _share(self, conn: Connection, located: Located, read: Points) -> None:
        points = self._outgoing(conn, located, read)
        found_at = self._found_at(conn, located)

        foreign = located.foreign
        outside: dict[tuple[str, tuple[str, ...]], set[Anchor]] = defaultdict(set)
        for refs in points.values():
            for edges in refs.values():
                for edge, anchor in edges:
                    if edge.keeps and anchor not in found_at[edge.target]:
                        outside[edge.target].add(anchor)
        owned = self._owned_outside(conn, outside, found_at)
        for table, refs in points.items() if owned else ():
            for key, edges in refs.items():
                if any(e.keeps and (*e.target, a) in owned for e, a in edges):  # (a)
                    foreign[table].add(key)
        changed = True
        while changed:  # (c), to a fixpoint: references may form cycles
            changed = False
            for table, refs in points.items():
                if not any(foreign[e.parent] for e in self.parents[table]):
                    continue  # none of its rows points at a foreign row: none can turn
                matched = located.matches.get(table, {})
                for key, edges in refs.items():
                    if key in foreign[table]:
                        continue
                    parents = [
                        (e, k) for e, a in edges for k in found_at[e.target].get(a, ())
                    ]
                    through_keep = any(e.keeps and k in foreign[e.parent] for e, k in parents)
                    # Found only by way of other people's rows (a follow edge of the other
                    # person's account): not the subject's, whatever the reference says.
                    only_theirs = key not in matched and bool(parents) and all(
                        k in foreign[e.parent] for e, k in parents
                    )
                    if through_keep or only_theirs:
                        foreign[table].add(key)
                        changed = True

        for table, keys in foreign.items():
            located.shared[table] |= keys
            for key in keys:
                for edge, anchor in points.get(table, {}).get(key, []):
                    if edge.keeps:
                        located.shared[edge.parent].update(found_at[edge.target].get(anchor, ()))
        kept = [(t, k) for t, keys in located.shared.items() for k in keys]
        while kept:
            table, key = kept.pop()
            for edge, anchor in points.get(table, {}).get(key, []):
                if not edge.keeps:
                    continue
                for parent_key in found_at[edge.target].get(anchor, ()):
                    if (parent_key not in located.shared[edge.parent]
                            and parent_key not in located.pinned[edge.parent]):
                        located.pinned[edge.parent].add(parent_key)
                        kept.append((edge.parent, parent_key))

    def _outgoing(self, conn: Connection, located: Located, read: Points) -> Points:
        """For every found row: what it points at (its non-null references). Rows whose
        references were read when they were found are not read again."""
        points: Points = defaultdict(dict)
        for table, owners in list(located.owners.items()):
            if not owners or not self.parents.get(table):
                continue
            known = read.get(table, {})
            mine = points[table]
            missing = []
            for key in owners:
                if (pointed := known.get(key)) is not None:
                    mine[key] = pointed
                else:
                    missing.append(key)
            for key, row in self.fetch(conn, table, missing, self.ref_columns[table]).items():
                mine[key] = self._points(table, row)
        return points

    def _accounts(
        self, subjects: Sequence[Subject], located: Located, held: dict[str, dict[Key, set[str]]]
    ) -> dict[str, set[str]]:
        """Each request's account ids: those it gave, and those in rows its account-grade
        identities matched directly (a device id or an IP address is often several
        people's: the account it leads to is not thereby the subject's)."""
        out = {s.request_id: set(s.values(IdentityType.USER_ID)) for s in subjects}
        for table, matched in located.matches.items():
            for key, pairs in matched.items():
                ids = held.get(table, {}).get(key, set())
                for rid, identity in pairs:
                    if identity.type in ACCOUNT_GRADE:
                        out.setdefault(rid, set()).update(ids)
        return out

    def _found_at(
        self, conn: Connection, located: Located
    ) -> dict[tuple[str, tuple[str, ...]], dict[Anchor, list[Key]]]:
        """Found rows by the values references point at (usually the primary key)."""
        out: dict[tuple[str, tuple[str, ...]], dict[Anchor, list[Key]]] = {}
        for edge in self.edges:
            if edge.target in out:
                continue
            index: dict[Anchor, list[Key]] = defaultdict(list)
            keys = list(located.owners[edge.parent])
            for key, anchor in self.anchors(conn, edge.parent, keys, edge.parent_columns).items():
                index[anchor].append(key)
            out[edge.target] = index
        return out

    def _owned_outside(
        self, conn: Connection, wanted: Mapping[tuple[str, tuple[str, ...]], set[Anchor]],
        found_at: Mapping[tuple[str, tuple[str, ...]], Mapping[Anchor, list[Key]]],
    ) -> set[Node]:
        """Which of the rows (not found for the batch) that found rows point at belong to
        someone: a row holding an identity, or pointing (through `shared: keep` references)
        at a row that does. One statement per table and level, whatever the batch."""
        owned: set[Node] = set()
        depends: dict[Node, set[Node]] = defaultdict(set)
        seen: set[Node] = set()
        pending = {target: set(anchors) for target, anchors in wanted.items()}
        while pending:
            (name, columns), anchors = pending.popitem()
            fresh = [a for a in anchors if (name, columns, a) not in seen]
            seen.update((name, columns, a) for a in fresh)
            if not fresh:
                continue
            mapped = self.system.tables[name]
            identity_columns = [i.column for i in mapped.identities]
            edges = [e for e in self.parents.get(name, []) if e.keeps]
            table = self.tables[name]
            wanted_cols = list(dict.fromkeys(
                [*columns, *identity_columns, *(c for e in edges for c in e.columns)]
            ))
            probe_cols = [table.c[c] for c in columns]
            values: list[Any] = [a[0] for a in fresh] if len(columns) == 1 else fresh
            for chunk in self.chunks(values):
                stmt = select(*[table.c[c] for c in wanted_cols]).where(
                    self.among(probe_cols, chunk))
                for row in conn.execute(stmt):
                    data = row._mapping
                    node = (name, columns, tuple(data[c] for c in columns))
                    if any(data[c] is not None for c in identity_columns):
                        owned.add(node)
                        continue
                    for edge in edges:
                        anchor = tuple(data[c] for c in edge.columns)
                        if None in anchor:
                            continue
                        if anchor in found_at.get(edge.target, {}):
                            owned.add(node)  # it points at a row of the batch: someone's
                            break
                        depends[node].add((*edge.target, anchor))
                        pending.setdefault(edge.target, set()).add(anchor)
        changed = True
        while changed:  # least fixpoint: a cycle of rows nobody holds stays nobody's
            changed = False
            for node, needs in depends.items():
                if node not in owned and needs & owned:
                    owned.add(node)
                    changed = True
        return owned

    # -- reading rows -------------------------------------------------------------------
    def anchors(
        self, conn: Connection, name: str, keys: Iterable[Key], columns: tuple[str, ...]
    ) -> dict[Key, Anchor]:
        """The values of `columns` in each row (usually just its primary key)."""
        keys = list(keys)
        if list(columns) == self.system.tables[name].primary_key:
            return {key: key for key in keys}
        rows = self.fetch(conn, name, keys, columns)
        return {key: tuple(row[c] for c in columns) for key, row in rows.items()}

    def pk_in(self, name: str, keys: Sequence[Key]) -> ColumnElement[bool]:
        table = self.tables[name]
        pk = [table.c[c] for c in self.system.tables[name].primary_key]
        return self.among(pk, [k[0] for k in keys] if len(pk) == 1 else list(keys))

    def among(self, columns: Sequence[ColumnElement[Any]], values: Sequence[Any]
              ) -> ColumnElement[bool]:
        """`columns IN values` (one value per row, a tuple when there are several
        columns), for one chunk of values (`chunks`)."""
        return among(self.dialect, columns, values)

    def chunks(self, items: Sequence[Any]) -> Iterator[list[Any]]:
        """`items` in lists as long as one statement takes on this system's dialect."""
        return chunks(items, self.chunk)

    def fetch(
        self, conn: Connection, name: str, keys: list[Key], columns: Iterable[str]
    ) -> dict[Key, dict[str, Any]]:
        table = self.tables[name]
        pk = self.system.tables[name].primary_key
        wanted = list(dict.fromkeys([*pk, *columns]))
        out: dict[Key, dict[str, Any]] = {}
        for chunk in self.chunks(keys):
            stmt = select(*[table.c[c] for c in wanted]).where(self.pk_in(name, chunk))
            for row in conn.execute(stmt):
                data = dict(zip(wanted, row, strict=True))
                out[tuple(data[c] for c in pk)] = data
        return out


def _own(located: Located, table: str, key: Key, owners: set[str]) -> bool:
    """Record owners of a row; True if that is news (the row must be propagated). The set
    is recorded as given, never changed afterwards (news make a new one): the rows reached
    from one row share their owners' set."""
    if not owners:
        return False
    rows = located.owners[table]
    current = rows.get(key)
    if current is None:
        rows[key] = owners
    elif owners <= current:
        return False
    else:
        rows[key] = current | owners
    return True


def _defer(slot: dict[Anchor, set[str]], anchors: Mapping[Anchor, set[str]]) -> None:
    """Record the owners a deferred table's rows under these anchors would get: the union
    over every look, as `_own` would record them on the rows (never changing a set)."""
    for anchor, owners in anchors.items():
        have = slot.get(anchor)
        if have is None:
            slot[anchor] = owners
        elif not owners <= have:
            slot[anchor] = have | owners


def _lookup_values(identity: Identity, column: Any, phone_region: str | None) -> list[Any]:
    """What to compare a column with for one identity: every spelling a store may hold,
    typed as the column is."""
    if identity.type is IdentityType.PHONE:
        return list(_phone_spellings(identity.value, phone_region))
    if identity.type is IdentityType.IP:
        return ip_variants(identity.value)
    if identity.type is IdentityType.THIRD_PARTY:
        provider, _, openid = identity.value.partition(":")
        return [(provider, openid)]
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return [identity.value]
    if python_type is int:
        # An id typed as text matches an integer key; one that is not a number an integer
        # column can hold matches nothing (rather than failing the batch).
        value = identity.value
        if not _INTEGER.fullmatch(value):
            return []
        number = int(value)
        return [number] if -(2**63) <= number < 2**63 else []
    return [identity.value]


def _getter(indexes: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """The values at `indexes` of a row, as a tuple."""
    if len(indexes) == 1:
        index = indexes[0]
        return lambda row: (row[index],)
    return itemgetter(*indexes)


@lru_cache(maxsize=100_000)
def _phone_spellings(e164: str, region: str | None) -> tuple[str, ...]:
    """`phone_variants`, worked out once per number: each look-up of a batch asks again,
    and parsing a number is about 100 µs."""
    return tuple(phone_variants(e164, region))


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def among(dialect: str | None, columns: Sequence[ColumnElement[Any]], values: Sequence[Any]
          ) -> ColumnElement[bool]:
    """`columns IN values` (one value per row, a tuple when there are several columns). On
    PostgreSQL the values go as one array parameter per column, unnested in the server
    (`listed`): the statement's text is the same for every chunk (compiled and parsed
    once, where an IN list of bound parameters is new text for every length), and the
    planner joins against the list (an index look-up per value, or one hashed pass over
    the table) whether the plan is made for these values or is a prepared statement's
    generic plan. Elsewhere, an IN list."""
    width = len(columns)
    arrays = [list(values)] if width == 1 else [[v[i] for v in values] for i in range(width)]
    table = listed(dialect, [c.type for c in columns], arrays, [f"c{i}" for i in range(width)])
    if table is None:
        probe = columns[0] if width == 1 else tuple_(*columns)
        return probe.in_(list(values))
    if width == 1:
        return columns[0].in_(select(table.c.c0))
    return tuple_(*columns).in_(select(*table.c))


def listed(
    dialect: str | None, types: Sequence[TypeEngine[Any]], arrays: Sequence[Sequence[Any]],
    names: Sequence[str],
) -> TableValuedAlias | None:
    """Lists of values (all of one length) as the columns `names` of a table, on
    PostgreSQL: `unnest(:a, :b) AS listed(names)`, one array parameter per column. None on
    other dialects, or for a type SQLAlchemy does not know."""
    if dialect != "postgresql":
        return None
    elements = [t for kind in types if (t := _array_element(kind)) is not None]
    if len(elements) < len(types):
        return None
    params = [bindparam(None, list(a), type_=ARRAY(t))
              for a, t in zip(arrays, elements, strict=True)]
    return func.unnest(*params).table_valued(*names).render_derived(name="listed")


def _array_element(kind: TypeEngine[Any]) -> TypeEngine[Any] | None:
    """The element type of the array a column's values are sent in, or None for a type
    SQLAlchemy does not know. Without a length or a scale: a cast to `varchar(64)[]` or
    `numeric(12,2)[]` would cut or round a longer value into one the column holds, and
    match a row the value is not."""
    if isinstance(kind, NullType):
        return None
    if isinstance(kind, String):
        return String()
    if isinstance(kind, Numeric):
        return type(kind)()
    return kind
