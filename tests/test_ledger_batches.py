"""Ledger writes are batch-shaped: the write transactions a system's step costs the ledger
do not grow with the batch (operations counted, not time)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event

from dsrflow.intake import submit
from pipeline import steps
from pipeline.runtime import Runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket


def _commits_for(tmp: Path, n: int) -> dict[str, int]:
    _, url = sqlworld.sqlite_world(tmp, 17, n)
    rt: Runtime = make_runtime(tmp, sqlworld.datamap_doc(url))
    try:
        ids = [submit(rt.ledger, rt.datamap, ticket(
            f"B-{uid}", "erasure", [{"type": "user_id", "value": str(uid)}])).request_id
            for uid in range(1, n + 1)]
        steps.open_requests(rt, ids, owner="batch-test")
        steps.resolve_identities(rt, ids)
        counted: dict[str, int] = {}
        phase = {"name": ""}

        def on_commit(_: object) -> None:
            counted[phase["name"]] = counted.get(phase["name"], 0) + 1

        event.listen(rt.ledger.engine, "commit", on_commit)
        for name, run in (("erase", steps.apply_to_system), ("verify", steps.verify_system)):
            phase["name"] = name
            results = run(rt, "db", ids)
            assert len(results) == n and all(r.error is None for r in results)
        event.remove(rt.ledger.engine, "commit", on_commit)
        return counted
    finally:
        rt.close()


@pytest.mark.parametrize("sizes", [(4, 32)])
def test_a_systems_step_costs_the_ledger_the_same_writes_for_any_batch(
    tmp_path: Path, sizes: tuple[int, int]
) -> None:
    small, large = sizes
    (tmp_path / "s").mkdir()
    (tmp_path / "l").mkdir()
    few, many = _commits_for(tmp_path / "s", small), _commits_for(tmp_path / "l", large)
    assert few == many, (few, many)
    assert few["erase"] == 4  # running, pseudonym keys, what it is about to commit, outcome
