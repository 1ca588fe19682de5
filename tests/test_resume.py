"""`resume-requests`: a verified request that nothing started is picked up once it has
waited longer than the grace period, and nothing else is; a request whose run died (its
lease expired) is taken over, and the dead flow run is marked crashed in Prefect."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dsrflow.intake import submit
from dsrflow.model import Status, StepAction
from flows.resume import resume_requests
from pipeline.runtime import Runtime, set_runtime
from tasks import resume
from tests import sqlworld
from tests.helpers import make_runtime, ticket


@pytest.fixture
def runtime(tmp_path: Path, prefect_server: list[Path]) -> Iterator[Runtime]:
    _, url = sqlworld.sqlite_world(tmp_path, 4, 6)
    rt = make_runtime(tmp_path, sqlworld.datamap_doc(url))
    previous = set_runtime(rt)
    yield rt
    set_runtime(previous)
    rt.close()


def _erasure(rt: Runtime, ticket_id: str, uid: int, verified: bool) -> str:
    doc = ticket(ticket_id, "erasure", [{"type": "user_id", "value": str(uid)}],
                 verified=verified)
    return submit(rt.ledger, rt.datamap, doc).request_id


def test_a_request_verified_by_hand_is_resumed_after_the_grace_period(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = runtime.ledger
    by_hand = _erasure(runtime, "R-1", 1, verified=False)
    ledger.mark_verified(by_hand, "id_card", datetime.now(UTC))
    waiting = _erasure(runtime, "R-2", 2, verified=False)  # still unverified: not touched
    just_now = _erasure(runtime, "R-3", 3, verified=True)

    # Within the grace period nothing is started: intake may be about to.
    assert resume_requests(grace_minutes=30) == {
        "resumed": 0, "abandoned": 0, "of_age": 0, "batches": 0}

    # Later, the verified ones run; the unverified one still waits for its identity.
    later = datetime.now(UTC) + timedelta(minutes=31)
    monkeypatch.setattr(resume, "now", lambda: later)
    assert resume_requests(grace_minutes=30, batch_size=1) == {
        "resumed": 2, "abandoned": 0, "of_age": 0, "batches": 2}
    assert ledger.get(by_hand).status is Status.COMPLETED
    assert ledger.get(just_now).status is Status.COMPLETED
    assert ledger.get(waiting).status is Status.AWAITING_VERIFICATION

    # Done is done: the next look finds nothing.
    assert resume_requests(grace_minutes=30) == {
        "resumed": 0, "abandoned": 0, "of_age": 0, "batches": 0}


def test_a_request_whose_run_died_is_taken_over_and_the_run_marked_crashed(
    runtime: Runtime,
) -> None:
    from uuid import UUID

    from prefect import flow, get_client
    from prefect.states import Running

    from pipeline import steps

    @flow(name="killed-run")
    def killed() -> None:  # pragma: no cover - never runs: only its flow run is made
        pass

    with get_client(sync_client=True) as client:
        dead = client.create_flow_run(killed, state=Running())
    ledger = runtime.ledger
    rid = _erasure(runtime, "K-1", 4, verified=True)
    # The run took the request an hour ago, started erasing, and was SIGKILLed: its lease
    # ran out 50 minutes ago, the request is in progress, its step running.
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert ledger.take_leases([rid], str(dead.id), timedelta(minutes=10),
                              at=an_hour_ago).granted == [rid]
    ledger.transition(rid, Status.IN_PROGRESS)
    ledger.record_step(rid, "db", "sql", StepAction.ERASE, steps.StepStatus.RUNNING)

    assert resume_requests(grace_minutes=30) == {
        "resumed": 1, "abandoned": 1, "of_age": 0, "batches": 1}
    assert ledger.get(rid).status is Status.COMPLETED
    [erase] = [s for s in ledger.steps([rid]) if (s.system, s.action) == ("db", "erase")]
    assert erase.status == "succeeded" and erase.attempts == 2
    assert ledger.lease_holders([rid]) == {}
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(str(dead.id))).state
    assert state is not None and state.is_crashed()
