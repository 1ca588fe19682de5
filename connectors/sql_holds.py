"""Which of a batch's rows legal holds keep in one SQL system.

A hold keeps a subject's data of some categories (or all). In a table that holds any of
them, the subject's rows are kept whole: a row is deleted or kept as a unit, and a held
column's row must not lose the columns that give it meaning. The rows those rows point at
(their parents, as the data map's references say) are kept too where their table deletes
rows, or the held row would point at nothing; where their table anonymizes, the parent is
anonymized as usual (its key, which the held row points at, stays).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Connection

from connectors.sql_ownership import Key, Located, Locator
from dsrflow.datamap import SqlSystem
from dsrflow.holds import Held


@dataclass
class HeldRows:
    held: dict[str, dict[Key, set[str]]] = field(default_factory=lambda: defaultdict(dict))
    pinned: dict[str, dict[Key, set[str]]] = field(default_factory=lambda: defaultdict(dict))

    def keeps(self, table: str, key: Key, deletes: bool) -> bool:
        """Whether erasure must leave the row: held, or pointed at by a held row in a
        table that deletes rows."""
        return key in self.held[table] or (deletes and key in self.pinned[table])

    def notes(self, table: str, key: Key) -> set[str]:
        return self.held[table].get(key) or self.pinned[table].get(key) or set()

    def __bool__(self) -> bool:
        return any(self.held.values())


def held_rows(
    conn: Connection, locator: Locator, system: SqlSystem, located: Located,
    held: Mapping[str, Held],
) -> HeldRows:
    """The rows the holds on these requests keep, each with the holds' notes."""
    out = HeldRows()
    if not held:
        return out
    for name, mapped in system.tables.items():
        for rid, what in held.items():
            if what.categories is not None and not mapped.categories & what.categories:
                continue
            for key in located.rows_of(name, rid):
                out.held[name].setdefault(key, set()).update(what.notes)
    # Level by level, one statement per table and reference: a parent's parent is
    # needed too, and references may form cycles (a row is revisited only with news).
    frontier: dict[str, set[Key]] = {name: set(rows) for name, rows in out.held.items()}
    index: dict[tuple[str, tuple[str, ...]], dict[tuple[object, ...], list[Key]]] = {}
    while frontier:
        news: dict[str, set[Key]] = defaultdict(set)
        for name, keys in frontier.items():
            for edge in locator.parents.get(name, []):
                if edge.target not in index:
                    found: dict[tuple[object, ...], list[Key]] = defaultdict(list)
                    for parent_key, anchor in locator.anchors(
                            conn, edge.parent, located.owners[edge.parent],
                            edge.parent_columns).items():
                        found[anchor].append(parent_key)
                    index[edge.target] = found
                for key, row in locator.fetch(conn, name, list(keys), edge.columns).items():
                    anchor = tuple(row[c] for c in edge.columns)
                    notes = out.notes(name, key)
                    for parent_key in index[edge.target].get(anchor, []):
                        if parent_key in out.held[edge.parent]:
                            continue
                        kept = out.pinned[edge.parent].setdefault(parent_key, set())
                        if not notes <= kept:
                            kept.update(notes)
                            news[edge.parent].add(parent_key)
        frontier = news
    return out
