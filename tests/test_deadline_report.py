"""The hourly deadline report on a real Prefect server, on a fixed clock: which requests
raise `dsr.request.at_risk` / `dsr.request.overdue` / `dsr.request.deadline_unknown`, that
a request is alerted once per state (not every hour), that nothing carries an identity, the
summary artifact, and that a request whose calendar was missing gets its due date once the
calendar is there."""

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
from dsrflow.tickets import Ticket
from flows.deadlines import deadline_report
from pipeline.runtime import Runtime, set_runtime
from tasks import deadlines as deadline_tasks
from tests import sqlworld
from tests.helpers import CN_2027, DUE_2027, RECEIVED_2027, make_runtime, ticket_2027

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
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], list[Any]]]:
    """Records events on their way to the server; calling it drains the worker and
    returns (and forgets) the dsr.* events seen so far. Drained at the end too: a worker
    left running would keep a client the next test's recorder does not know."""
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

    yield collect
    collect()


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


# -- deadlines not known yet ------------------------------------------------------------------
@pytest.fixture
def waiting_for_a_calendar(
    tmp_path: Path, prefect_server: list[Path]
) -> Iterator[tuple[Runtime, Path]]:
    """A runtime whose `calendar_overrides` file is configured but has no notice yet (as an
    installation has it between two State Council notices), and the file."""
    overrides = tmp_path / "calendar-overrides.yaml"
    overrides.write_text("# the State Council's notices, once published\n")
    doc: dict[str, Any] = {**sqlworld.DATAMAP_DOC}
    doc["systems"] = {"db": {**doc["systems"]["db"],
                             "url": f"sqlite:///{tmp_path / 'userdb.sqlite'}"}}
    rt = make_runtime(tmp_path, doc, calendar_overrides=overrides)
    previous = set_runtime(rt)
    yield rt, overrides
    set_runtime(previous)
    rt.close()


def _received_in_2027(name: str) -> Ticket:
    """A PIPL ticket received on 1 March 2027, a year the installed calendars lack."""
    return ticket_2027(Ticket.model_validate(_ticket(name, datetime(2026, 11, 2, tzinfo=UTC))))


def test_an_unknown_deadline_alerts_and_is_computed_once_the_calendar_appears(
    waiting_for_a_calendar: tuple[Runtime, Path], events: Callable[[], list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )

    def artifact() -> str:
        with get_client(sync_client=True) as client:
            [found] = client.read_latest_artifacts(
                artifact_filter=ArtifactCollectionFilter(
                    key=ArtifactCollectionFilterKey(any_=["deadline-report"])))
        return str(found.data)

    runtime, overrides = waiting_for_a_calendar
    request_id, _ = runtime.ledger.accept(_received_in_2027("RISK"), "dm", "pol")
    assert runtime.ledger.get(request_id).due_at is None
    _clock(monkeypatch, RECEIVED_2027 + timedelta(days=1))

    # Not knowing the deadline is a risk of its own: alerted, once.
    assert deadline_report() == {"unknown": 1}
    [unknown] = events()
    assert unknown.event == "dsr.request.deadline_unknown"
    assert unknown.resource.id == f"dsrflow.request.{request_id}"
    assert unknown.payload["state"] == "unknown"
    assert unknown.payload["due_at"] is None and unknown.payload["business_days_left"] is None
    assert "2027" in unknown.payload["reason"] and "calendar_overrides" in unknown.payload["reason"]
    text = artifact()
    assert "| unknown | 1 |" in text and request_id in text and "**unknown**" in text
    assert EMAILS["RISK"] not in json.dumps(unknown.model_dump(mode="json")) + text
    deadline_report()
    assert events() == []

    # The notice is typed in while the process runs: the next report computes the date.
    overrides.write_text(CN_2027)
    counts = deadline_report()

    record = runtime.ledger.get(request_id)
    assert (record.due_at, record.deadline_error) == (DUE_2027, None)
    assert counts == {"on_time": 1}
    assert events() == []  # on time: nothing to say
    assert "1 requests got their due date this run" in artifact()
    # Later runs change nothing more.
    deadline_report()
    assert runtime.ledger.get(request_id) == record
    assert runtime.ledger.verify_audit_chain() is None


def test_a_broken_overrides_file_does_not_stop_the_report(
    waiting_for_a_calendar: tuple[Runtime, Path], events: Callable[[], list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A typo in the file leaves the calendars as they were; overdue requests still alert."""
    runtime, overrides = waiting_for_a_calendar
    late = submit(runtime.ledger, runtime.datamap,
                  _ticket("LATE", datetime(2026, 10, 9, 9, 30, tzinfo=UTC))).request_id
    unknown, _ = runtime.ledger.accept(_received_in_2027("RISK"), "dm", "pol")
    overrides.write_text("CN:\n  2027:\n    holiday: [2027-03-03]\n")  # 'holiday': a typo
    _clock(monkeypatch, RECEIVED_2027 + timedelta(days=1))

    assert deadline_report() == {"overdue": 1, "unknown": 1}
    assert {(e.event, e.resource.id) for e in events()} == {
        ("dsr.request.overdue", f"dsrflow.request.{late}"),
        ("dsr.request.deadline_unknown", f"dsrflow.request.{unknown}"),
    }
