"""`resume-requests`: a verified request that nothing started is picked up once it has
waited longer than the grace period, and nothing else is."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dsrflow.intake import submit
from dsrflow.model import Status
from flows import resume
from flows.resume import resume_requests
from tasks.runtime import Runtime, set_runtime
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
    assert resume_requests(grace_minutes=30) == {"resumed": 0, "batches": 0}

    # Later, the verified ones run; the unverified one still waits for its identity.
    later = datetime.now(UTC) + timedelta(minutes=31)
    monkeypatch.setattr(resume, "now", lambda: later)
    assert resume_requests(grace_minutes=30, batch_size=1) == {"resumed": 2, "batches": 2}
    assert ledger.get(by_hand).status is Status.COMPLETED
    assert ledger.get(just_now).status is Status.COMPLETED
    assert ledger.get(waiting).status is Status.AWAITING_VERIFICATION

    # Done is done: the next look finds nothing.
    assert resume_requests(grace_minutes=30) == {"resumed": 0, "batches": 0}
