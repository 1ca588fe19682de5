"""The hourly deadline report on a real Prefect server, on a fixed clock: which requests
raise `dsr.request.at_risk` / `dsr.request.overdue`, that a request is alerted once per
state (not every hour), that nothing carries an identity, and the summary artifact."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from dsrflow.intake import submit
from dsrflow.ledger import store as ledger_store
from dsrflow.model import Status
from flows.deadlines import deadline_report
from tasks import deadlines as deadline_tasks
from tasks.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime

EMAILS = {name: f"{name.lower()}.subject@example.org" for name in
          ("RISK", "LATE", "DONE", "FRESH", "WAIT", "OLDDONE")}


def _ticket(ticket_id: str, received: datetime, verified: bool = True) -> dict[str, Any]:
    return {
        "ticket_id": ticket_id,
        "type": "erasure",
        "regime": "pipl",
        "identities": [{"type": "email", "value": EMAILS[ticket_id]}],
        "verification": {
            "method": "sms_code",
            "verified_at": (received + timedelta(minutes=5)).isoformat() if verified else None,
        },
        "channel": "app",
        "received_at": received.isoformat(),
    }


@pytest.fixture
def runtime(tmp_path: Path, prefect_server: list[Path]) -> Iterator[Runtime]:
    doc: dict[str, Any] = {**sqlworld.DATAMAP_DOC}
    doc["systems"] = {"db": {**doc["systems"]["db"],
                             "url": f"sqlite:///{tmp_path / 'userdb.sqlite'}"}}
    rt = make_runtime(tmp_path, doc)
    previous = set_runtime(rt)
    yield rt
    set_runtime(previous)
    rt.close()


@pytest.fixture
def world(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Six requests (PIPL: 15 Chinese working days): ticket id -> request id. Receipt
    dates are in the past (tickets from the future are refused); the two completed ones
    are stamped on a fixed day, not today."""
    ids = {
        "RISK": datetime(2026, 11, 2, 9, 30, tzinfo=UTC),
        "LATE": datetime(2026, 10, 9, 9, 30, tzinfo=UTC),
        "DONE": datetime(2026, 11, 2, 9, 30, tzinfo=UTC),
        "FRESH": datetime(2026, 11, 20, 9, 30, tzinfo=UTC),
        "WAIT": datetime(2026, 11, 20, 9, 30, tzinfo=UTC),
        "OLDDONE": datetime(2026, 10, 9, 9, 30, tzinfo=UTC),
    }
    out = {
        name: submit(runtime.ledger, runtime.datamap,
                     _ticket(name, received, verified=name != "WAIT")).request_id
        for name, received in ids.items()
    }
    with monkeypatch.context() as m:
        m.setattr(ledger_store, "now", lambda: datetime(2026, 11, 10, 8, 0, tzinfo=UTC))
        for name in ("DONE", "OLDDONE"):
            runtime.ledger.transition(out[name], Status.IN_PROGRESS)
            runtime.ledger.transition(out[name], Status.COMPLETED)
    return out


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[Any]]:
    """Records events on their way to the server; calling it drains the worker and
    returns (and forgets) the dsr.* events seen so far."""
    from prefect.events.clients import AssertingPassthroughEventsClient
    from prefect.events.worker import EventsWorker

    AssertingPassthroughEventsClient.reset()
    monkeypatch.setattr(
        EventsWorker, "instance",
        partial(EventsWorker.instance, client_type=AssertingPassthroughEventsClient),
    )

    def collect() -> list[Any]:
        EventsWorker.instance().drain()
        seen = [e for c in AssertingPassthroughEventsClient.all for e in c.events
                if e.event.startswith("dsr.")]
        AssertingPassthroughEventsClient.reset()
        return seen

    return collect


def _clock(monkeypatch: pytest.MonkeyPatch, at: datetime) -> None:
    monkeypatch.setattr(deadline_tasks, "now", lambda: at)


def test_at_risk_and_overdue_requests_are_alerted_once_per_state(
    runtime: Runtime, world: dict[str, str], events: Callable[[], list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    risk_due = runtime.ledger.get(world["RISK"]).due_at
    assert risk_due is not None
    at = risk_due - timedelta(days=1)  # a day before RISK's deadline, long after LATE's
    _clock(monkeypatch, at)

    counts = deadline_report()

    assert counts == {"at_risk": 1, "overdue": 1, "on_time": 1, "awaiting_verification": 1,
                      "completed_on_time": 1, "completed_late": 1}
    seen = events()
    by_resource = {e.resource.id: e for e in seen}
    assert len(seen) == 2
    risk = by_resource[f"dsrflow.request.{world['RISK']}"]
    late = by_resource[f"dsrflow.request.{world['LATE']}"]
    assert risk.event == "dsr.request.at_risk"
    assert late.event == "dsr.request.overdue"
    assert risk.resource.name == "RISK" and late.resource.name == "LATE"
    assert risk.payload == {
        "type": "erasure", "regime": "pipl", "status": "verified", "state": "at_risk",
        "due_at": risk_due.isoformat(),
        "business_days_left": runtime.deadlines.working_days_used(
            runtime.ledger.get(world["RISK"]).regime, at, risk_due),  # type: ignore[arg-type]
    }
    assert 0 < risk.payload["business_days_left"] <= runtime.settings.at_risk_days
    assert late.payload["business_days_left"] < 0
    # No identity anywhere in what Prefect is given.
    dumped = json.dumps([e.model_dump(mode="json") for e in seen])
    assert not [email for email in EMAILS.values() if email in dumped]

    # An hour later nothing has changed: nothing is said again.
    _clock(monkeypatch, at + timedelta(hours=1))
    deadline_report()
    assert events() == []

    # Past RISK's deadline it becomes overdue: one new event, for it alone.
    _clock(monkeypatch, risk_due + timedelta(hours=1))
    deadline_report()
    [overdue] = events()
    assert overdue.event == "dsr.request.overdue"
    assert overdue.resource.id == f"dsrflow.request.{world['RISK']}"

    # With a reminder interval, unchanged alerts are repeated once they are that old.
    _clock(monkeypatch, risk_due + timedelta(hours=30))
    deadline_report(remind_every_hours=24)
    assert {e.resource.name for e in events()} == {"RISK", "LATE"}

    # The ledger's audit chain remembers each alert, and stays whole.
    audit_ids = deadline_tasks.last_alerts(runtime.ledger, list(world.values()))
    assert set(audit_ids) == {world["RISK"], world["LATE"]}
    assert runtime.ledger.verify_audit_chain() is None


def test_the_artifact_counts_states_without_identities(
    runtime: Runtime, world: dict[str, str], events: Callable[[], list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )

    risk_due = runtime.ledger.get(world["RISK"]).due_at
    assert risk_due is not None
    _clock(monkeypatch, risk_due - timedelta(days=1))
    deadline_report()
    events()

    with get_client(sync_client=True) as client:
        [artifact] = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(any_=["deadline-report"]))
        )
    text = str(artifact.data)
    assert "| overdue | 1 |" in text and "| at_risk | 1 |" in text
    assert "| completed_on_time | 1 |" in text and "| on_time | 1 |" in text
    assert world["RISK"] in text and world["LATE"] in text
    assert world["DONE"] not in text  # only the requests that need attention are listed
    assert not [email for email in EMAILS.values() if email in text]


def test_assess_skips_closed_and_rejected_requests(runtime: Runtime) -> None:
    """The pure part, without Prefect: a rejected ticket and a refused request never
    alert, however old."""
    old = datetime(2026, 9, 1, 9, 30, tzinfo=UTC)
    rejected = submit(runtime.ledger, runtime.datamap, {"ticket_id": "BAD", "type": "nope"})
    refused = submit(runtime.ledger, runtime.datamap, _ticket("LATE", old)).request_id
    runtime.ledger.transition(refused, Status.REFUSED, reason="manifestly unfounded")
    report = deadline_tasks.assess(runtime.ledger.all(), runtime.deadlines,
                                   datetime(2026, 12, 20, tzinfo=UTC), 3)
    assert report.alerting == []
    assert report.counts["not_applicable"] == 1
    assert sum(report.counts.values()) == 2  # the refused one counts as completed
    assert rejected.status is Status.REJECTED
