"""The ledger is written batch by batch: a run over 24 requests commits no more write
transactions than a run over 4 (each one a lock every other writer waits for, and an
audit entry), and the audit chain still verifies with an entry per request's move."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dsrflow.intake import submit
from dsrflow.ledger import Ledger
from dsrflow.model import Status
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket

WRITES = ("INSERT", "UPDATE", "DELETE")


class WriteTransactions:
    """Counts the committed transactions of an engine that wrote something."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        self._writing: set[int] = set()
        sa.event.listen(engine, "before_cursor_execute", self._statement)
        sa.event.listen(engine, "commit", self._commit)
        sa.event.listen(engine, "rollback", self._rollback)

    def _statement(self, conn: sa.Connection, _c: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(WRITES):
            self._writing.add(id(conn))

    def _commit(self, conn: sa.Connection) -> None:
        if id(conn) in self._writing:
            self._writing.discard(id(conn))
            self.count += 1

    def _rollback(self, conn: sa.Connection) -> None:
        self._writing.discard(id(conn))


@pytest.fixture
def run_of(tmp_path: Path, prefect_server: list[Path]) -> Iterator[Any]:
    opened: list[Runtime] = []

    def run(n: int) -> tuple[int, Runtime, list[str]]:
        from flows.request import process_requests

        folder = tmp_path / str(n)
        folder.mkdir()
        _, url = sqlworld.sqlite_world(folder, n + 6, 5)
        rt = make_runtime(folder, sqlworld.datamap_doc(url))
        opened.append(rt)
        set_runtime(rt)
        ids = [submit(rt.ledger, rt.datamap, ticket(
            f"B-{uid}", "erasure" if uid % 3 else "access",
            [{"type": "user_id", "value": str(uid)}])).request_id for uid in range(1, n + 1)]
        writes = WriteTransactions(rt.ledger.engine)
        process_requests(ids)
        return writes.count, rt, ids

    yield run
    set_runtime(None)
    for rt in opened:
        rt.close()


def test_write_transactions_do_not_grow_with_the_batch(run_of: Any) -> None:
    small, _, _ = run_of(4)
    large, rt, ids = run_of(24)
    # Access packages are recorded one by one (a key went to the subject: a rerun must
    # not send another), two transactions each; everything else is per batch.
    packages = sum(1 for r in rt.ledger.get_many(ids) if r.type and r.type.collects)
    assert large - 2 * packages <= small, (small, large, packages)
    assert {r.status for r in rt.ledger.get_many(ids)} == {Status.COMPLETED}
    assert rt.ledger.verify_audit_chain() is None
    moves = _audited_moves(rt.ledger)
    # Every request's every move is on the chain, inside its batch's entry.
    assert Counter(m["to"] for m in moves) == {"in_progress": 24, "completed": 24}
    assert {m["request_id"] for m in moves} == set(ids)
    # Erasures completed in a batch leave a tombstone each, as one completed alone does.
    erasures = {r.id for r in rt.ledger.get_many(ids) if r.type and r.type.erases}
    assert {t.request_id for t in rt.ledger.tombstones()} == erasures


def test_ledger_statements_of_an_erasure_batch_do_not_grow_with_it(
    tmp_path: Path, prefect_server: list[Path]
) -> None:
    """Reads included: a batch of 24 erasures, from opening to certificates and closing,
    asks the ledger no more than a batch of 4 (the certificates' requests, steps, partner
    rows and holds are read for the batch, not per request)."""
    counts = [_statements_of_erasures(tmp_path, n) for n in (4, 24)]
    assert counts[1] == counts[0], counts


def _statements_of_erasures(tmp_path: Path, n: int) -> int:
    from flows.request import process_requests

    folder = tmp_path / f"erasures-{n}"
    folder.mkdir()
    _, url = sqlworld.sqlite_world(folder, n + 6, 5)
    rt = make_runtime(folder, sqlworld.datamap_doc(url))
    previous = set_runtime(rt)
    try:
        ids = [submit(rt.ledger, rt.datamap, ticket(
            f"E-{uid}", "erasure", [{"type": "user_id", "value": str(uid)}])).request_id
            for uid in range(1, n + 1)]
        statements = Counter[str]()

        def seen(_conn: sa.Connection, _c: Any, statement: str, *_: Any) -> None:
            statements[statement.split()[0]] += 1

        sa.event.listen(rt.ledger.engine, "before_cursor_execute", seen)
        process_requests(ids)
        assert {r.status for r in rt.ledger.get_many(ids)} == {Status.COMPLETED}
        assert len(list(rt.settings.certificates_path.rglob("*.json"))) == n
        return statements.total()
    finally:
        set_runtime(previous)
        rt.close()


def _audited_moves(ledger: Ledger) -> list[dict[str, Any]]:
    moves: list[dict[str, Any]] = []
    for _, detail in ledger.audit_events("request.status"):
        moves += detail.get("moves") or [{"request_id": None, **detail}]
    return [m for m in moves if m["request_id"] is not None]


def test_a_batch_move_lost_to_a_request_that_moved_on_is_on_record(
    tmp_path: Path,
) -> None:
    """A run closes a batch while a partner's callback already closed one of it: that one
    stays as the callback left it, the others move, and the audit trail lists the loss."""
    rt = make_runtime(tmp_path, sqlworld.datamap_doc(sqlworld.sqlite_world(tmp_path, 8, 4)[1]))
    try:
        ids = [submit(rt.ledger, rt.datamap, ticket(
            f"L-{uid}", "erasure", [{"type": "user_id", "value": str(uid)}])).request_id
            for uid in (1, 2, 3)]
        open_ = frozenset({Status.VERIFIED})
        assert rt.ledger.transition_many(
            {rid: (Status.IN_PROGRESS, None) for rid in ids}, open_) == dict.fromkeys(
                ids, Status.IN_PROGRESS)
        rt.ledger.transition(ids[0], Status.COMPLETED)  # the callback
        after = rt.ledger.transition_many(
            {rid: (Status.PARTIALLY_COMPLETED, "db failed") for rid in ids},
            frozenset({Status.IN_PROGRESS}))
        assert after == {ids[0]: Status.COMPLETED, ids[1]: Status.PARTIALLY_COMPLETED,
                         ids[2]: Status.PARTIALLY_COMPLETED}
        records = {r.id: r for r in rt.ledger.get_many(ids)}
        assert records[ids[0]].reason is None
        assert records[ids[1]].reason == "db failed"
        [(_, lost)] = rt.ledger.audit_events("request.status_lost")
        assert lost["moves"] == [{"request_id": ids[0], "to": "partially_completed",
                                  "found": "completed"}]
        assert {t.request_id for t in rt.ledger.tombstones()} == {ids[0]}
        assert rt.ledger.verify_audit_chain() is None
    finally:
        rt.close()
