"""One request harms only itself: in a batch, a request whose identity a system cannot use
fails alone in that system, with its reason, and the rest of the batch completes; a request
whose identities could not be resolved goes to no system, so nothing reports success for
it; a failure of the system itself fails the batch at once. On the real Prefect server,
through the request flow."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.sql import SqlConnector
from dsrflow.identities import Subject
from dsrflow.intake import submit
from dsrflow.ledger import StepRecord
from dsrflow.model import Status
from flows.request import BatchIncomplete, process_requests
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket

USERS = 8


@pytest.fixture
def world(tmp_path: Path) -> tuple[sqlworld.World, str]:
    return sqlworld.sqlite_world(tmp_path, 11, USERS)


@pytest.fixture
def runtime(
    tmp_path: Path, world: tuple[sqlworld.World, str], prefect_server: list[Path]
) -> Iterator[Runtime]:
    rt = make_runtime(tmp_path, sqlworld.datamap_doc(world[1]), task_retries=0)
    previous = set_runtime(rt)
    yield rt
    set_runtime(previous)
    rt.close()


def erasures(rt: Runtime, w: sqlworld.World, uids: Sequence[int]) -> dict[int, str]:
    return {
        uid: submit(rt.ledger, rt.datamap, ticket(
            f"I-{uid}", "erasure", [{"type": "email", "value": str(w.user(uid)["email"])}]
        )).request_id
        for uid in uids
    }


def count_posts(url: str, uid: int) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(sqlworld.posts)
                         .where(sqlworld.posts.c.user_id == uid)).scalar_one()
    engine.dispose()
    return int(n)


def steps_of(rt: Runtime, rid: str) -> dict[tuple[str, str], StepRecord]:
    return {(s.system, s.action.value): s for s in rt.ledger.steps([rid])}


def test_a_request_the_system_cannot_serve_fails_alone(
    runtime: Runtime, world: tuple[sqlworld.World, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, url = world
    ids = erasures(runtime, w, range(1, USERS + 1))
    culprit = ids[6]
    calls: list[int] = []
    real_erase = SqlConnector.erase

    def erase(self: SqlConnector, subjects: Sequence[Subject], *args: Any,
              **kwargs: Any) -> Any:
        calls.append(len(subjects))
        if any(s.request_id == culprit for s in subjects):
            # What a value the system cannot use does (`int('²')`), with the value in it.
            raise ValueError("invalid literal for int() with base 10: 'MARKER-6'")
        return real_erase(self, subjects, *args, **kwargs)

    monkeypatch.setattr(SqlConnector, "erase", erase)
    with pytest.raises(BatchIncomplete, match="1 of 8"):
        process_requests(list(ids.values()))

    for uid, rid in ids.items():
        record = runtime.ledger.get(rid)
        db = steps_of(runtime, rid)[("db", "erase")]
        if rid == culprit:
            assert record.status is Status.FAILED
            assert db.status == "failed" and db.error
            assert "MARKER" not in str(db.error) and "MARKER" not in str(record.reason)
            assert count_posts(url, uid) == len(
                [p for p in w.rows.get("posts", []) if p["user_id"] == uid])
        else:
            assert record.status is Status.COMPLETED, (uid, record.reason)
            assert db.status == "succeeded"
            assert count_posts(url, uid) == 0
    # Found by halving the batch: 8, then 4 + 4, 2 + 2, 1 + 1, not one call per request
    # (the order depends on which half the culprit sits in).
    assert sorted(calls, reverse=True) == [8, 4, 4, 2, 2, 1, 1]


def test_a_failure_of_the_system_itself_fails_the_batch_at_once(
    runtime: Runtime, world: tuple[sqlworld.World, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, _ = world
    ids = erasures(runtime, w, range(1, 5))
    calls: list[int] = []

    def erase(self: SqlConnector, subjects: Sequence[Subject], *args: Any,
              **kwargs: Any) -> Any:
        calls.append(len(subjects))
        raise sa.exc.OperationalError("DELETE", {}, Exception("server closed the connection"))

    monkeypatch.setattr(SqlConnector, "erase", erase)
    with pytest.raises(BatchIncomplete):
        process_requests(list(ids.values()))
    assert calls == [4]
    for rid in ids.values():
        assert steps_of(runtime, rid)[("db", "erase")].status == "failed"


def test_a_request_whose_identities_could_not_be_resolved_goes_nowhere(
    runtime: Runtime, world: tuple[sqlworld.World, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, url = world
    ids = erasures(runtime, w, [2, 3, 4])
    culprit = ids[3]
    real_discover = SqlConnector.discover

    def discover(self: SqlConnector, subjects: Sequence[Subject]) -> Any:
        if any(s.request_id == culprit for s in subjects):
            raise ValueError("cannot read MARKER-3")
        return real_discover(self, subjects)

    monkeypatch.setattr(SqlConnector, "discover", discover)
    with pytest.raises(BatchIncomplete, match="1 of 3"):
        process_requests(list(ids.values()))

    # Nothing reports success for it: a failed look-up is never "nothing left".
    steps = steps_of(runtime, culprit)
    assert steps[("db", "resolve")].status == "failed"
    assert steps[("db", "erase")].status == "failed"
    assert "could not be resolved" in str(steps[("db", "erase")].error)
    assert not [s for s in steps.values()
                if s.status == "succeeded" and s.kind != "deliverable"]
    certificate = steps[("erasure-certificate", "certify")]
    document = json.loads(Path(certificate.details["path"]).read_text())
    assert document["certificate"]["outcome"]["status"] == "incomplete"
    assert runtime.ledger.get(culprit).status is Status.FAILED
    assert count_posts(url, 3) == len([p for p in w.rows.get("posts", []) if p["user_id"] == 3])
    for uid in (2, 4):
        assert runtime.ledger.get(ids[uid]).status is Status.COMPLETED
        assert count_posts(url, uid) == 0
