"""The completion report on a fixed clock: the deadline state of every kind of request,
business days counted on the Chinese calendar, one row per request × system, and files
that hold no identity."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from holidays.countries.china import ChinaStaticHolidays
from hypothesis import given, settings
from hypothesis import strategies as st

from dsrflow.crypto import Keyring
from dsrflow.deadlines import Deadlines
from dsrflow.ledger import Ledger, RequestRecord, StepCounts
from dsrflow.model import Regime, RequestType, Status, StepStatus
from dsrflow.report import (
    REQUEST_COLUMNS,
    STEP_COLUMNS,
    deadline_state,
    requests_frame,
    steps_frame,
    to_html,
    to_markdown,
    write_reports,
)
from dsrflow.tickets import Rejection, Ticket, parse_ticket

# Friday 20 November 2026, noon in Shanghai.
NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
EMAIL = "Report.Subject@Example.com"
PHONE = "139 1234 5678"
IDENTITY_SPELLINGS = (
    "report.subject@example.com", "Report.Subject@Example.com", "+8613912345678",
    "13912345678", "139 1234 5678",
)


def at(day: str) -> datetime:
    """Noon in Shanghai (04:00 UTC) of an ISO date."""
    return datetime.fromisoformat(day).replace(hour=4, tzinfo=UTC)


def make_ticket(
    ticket_id: str, received: datetime, verified: bool = True, regime: str = "pipl"
) -> Ticket:
    parsed = parse_ticket({
        "ticket_id": ticket_id,
        "type": "erasure",
        "regime": regime,
        "identities": [{"type": "email", "value": EMAIL}, {"type": "phone", "value": PHONE}],
        "verification": {
            "method": "sms_otp",
            "verified_at": (received + timedelta(minutes=3)).isoformat() if verified else None,
        },
        "received_at": received.isoformat(),
    })
    assert isinstance(parsed, Ticket)
    return parsed


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The ledger's own clock (completion times, step times), fixed."""
    clock = Clock()
    monkeypatch.setattr("dsrflow.ledger.store.now", clock)
    return clock


@pytest.fixture
def ledger(tmp_path: Path, keyring: Keyring, clock: Clock) -> Iterator[Ledger]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", keyring)
    ledger.migrate()
    yield ledger
    ledger.dispose()


@pytest.fixture
def deadlines() -> Deadlines:
    return Deadlines()


Accept = Callable[..., str]


@pytest.fixture
def accept(ledger: Ledger, clock: Clock) -> Accept:
    def accept(
        ticket_id: str, received: datetime, *path: Status, done: datetime | None = None,
        verified: bool = True, regime: str = "pipl",
    ) -> str:
        request_id, _ = ledger.accept(make_ticket(ticket_id, received, verified, regime), "dm", "p")
        for status in path:
            if done is not None:
                clock.now = done
            ledger.transition(request_id, status)
        clock.now = NOW
        return request_id

    return accept


@pytest.fixture
def world(ledger: Ledger, accept: Accept) -> dict[str, str]:
    """One request in every deadline state at NOW."""
    work = (Status.IN_PROGRESS,)
    finish = (Status.IN_PROGRESS, Status.COMPLETED)
    last_year = max(ChinaStaticHolidays.special_public_holidays)
    no_calendar = make_ticket("T-unknown", at("2026-11-01")).model_copy(
        update={"received_at": datetime(last_year, 12, 20, 4, tzinfo=UTC)}
    )
    return {
        # due 9 Dec: 13 working days left
        "on_time": accept("T-on-time", at("2026-11-18"), *work),
        # due 23 Nov (Mon): one working day left
        "at_risk": accept("T-at-risk", at("2026-11-02")),
        # due 18 Nov
        "overdue": accept("T-overdue", at("2026-10-28"), *work),
        "awaiting_verification": accept("T-awaiting", at("2026-11-18"), verified=False),
        # CCPA: 45 days run while the identity is being verified
        "overdue_unverified": accept(
            "T-ccpa-unverified", at("2026-10-01"), verified=False, regime="ccpa"
        ),
        # due 23 Nov, completed 10 Nov
        "completed_on_time": accept("T-done", at("2026-11-02"), *finish, done=at("2026-11-10")),
        # due 29 Oct, completed 19 Nov
        "completed_late": accept("T-late", at("2026-10-09"), *finish, done=at("2026-11-19")),
        "not_applicable": ledger.reject(Rejection("type: unknown", ticket_id="T-bad")),
        "unknown": ledger.accept(no_calendar, "dm", "p")[0],
    }


def states(frame: pd.DataFrame) -> dict[str, str]:
    return dict(zip(frame["request_id"], frame["deadline_state"], strict=True))


def test_every_deadline_state(world: dict[str, str], ledger: Ledger, deadlines: Deadlines) -> None:
    frame = requests_frame(ledger, deadlines, now=NOW)
    got = states(frame)
    assert got == {
        world["on_time"]: "on_time",
        world["at_risk"]: "at_risk",
        world["overdue"]: "overdue",
        world["awaiting_verification"]: "awaiting_verification",
        world["overdue_unverified"]: "overdue",
        world["completed_on_time"]: "completed_on_time",
        world["completed_late"]: "completed_late",
        world["not_applicable"]: "not_applicable",
        world["unknown"]: "unknown",
    }
    # The request whose calendar is unknown says why.
    reason = frame.set_index("request_id").loc[world["unknown"], "reason"]
    assert "not published" in str(reason)


def test_requests_frame_has_exactly_the_report_columns(
    world: dict[str, str], ledger: Ledger, deadlines: Deadlines
) -> None:
    frame = requests_frame(ledger, deadlines, now=NOW)
    assert list(frame.columns) == REQUEST_COLUMNS
    assert len(frame) == len(world)
    row = frame.set_index("request_id").loc[world["completed_late"]]
    assert row["ticket_id"] == "T-late"
    assert row["type"] == "erasure"
    assert row["regime"] == "pipl"
    assert row["status"] == "completed"
    assert row["received_at"] == "2026-10-09T04:00:00+00:00"
    assert row["due_at"] == "2026-10-29T15:59:59+00:00"  # 23:59:59 in Shanghai
    assert row["completed_at"] == "2026-11-19T04:00:00+00:00"
    rejected = frame.set_index("request_id").loc[world["not_applicable"]]
    assert rejected["reason"] == "type: unknown"
    assert pd.isna(rejected["business_days_used"])


def test_the_at_risk_threshold(accept: Accept, ledger: Ledger, deadlines: Deadlines) -> None:
    record = ledger.get(accept("T-1", at("2026-11-02"), Status.IN_PROGRESS))  # due 23 Nov
    assert record.due_at == datetime(2026, 11, 23, 15, 59, 59, tzinfo=UTC)

    # 17 Nov: 18, 19, 20, 23 left -> 4 working days.
    assert deadline_state(record, deadlines, at("2026-11-17"), at_risk_days=3) == "on_time"
    assert deadline_state(record, deadlines, at("2026-11-17"), at_risk_days=4) == "at_risk"
    # 18 Nov: 3 left.
    assert deadline_state(record, deadlines, at("2026-11-18"), at_risk_days=3) == "at_risk"
    # The weekend before the last day counts for nothing: on Saturday one day is left.
    assert deadline_state(record, deadlines, at("2026-11-21"), at_risk_days=1) == "at_risk"
    assert deadline_state(record, deadlines, at("2026-11-21"), at_risk_days=0) == "on_time"
    # The last second of the last day, then the first second after it.
    assert deadline_state(record, deadlines, record.due_at, at_risk_days=3) == "at_risk"
    late = record.due_at + timedelta(seconds=1)
    assert deadline_state(record, deadlines, late, at_risk_days=3) == "overdue"


@settings(max_examples=60, deadline=None)
@given(
    received=st.dates(min_value=date(2026, 1, 1), max_value=date(2026, 11, 30)),
    elapsed=st.integers(min_value=0, max_value=40),
    at_risk_days=st.integers(min_value=0, max_value=15),
)
def test_at_risk_means_few_of_the_fifteen_working_days_left(
    received: date, elapsed: int, at_risk_days: int
) -> None:
    """For a PIPL request, the days used (shown in the report) and the days left (which
    decide at_risk) always add up to the 15 working days, whatever holidays lie between."""
    deadlines = Deadlines()
    received_at = at(received.isoformat())
    due = deadlines.due(Regime.PIPL, received_at)
    now = min(received_at + timedelta(days=elapsed), due)
    record = RequestRecord(
        id="r", ticket_id="T", type=RequestType.ERASURE, regime=Regime.PIPL, channel="app",
        scope=None, status=Status.IN_PROGRESS, reason=None, received_at=received_at,
        verified_at=received_at, due_at=due, deadline_error=None, completed_at=None,
        datamap_version="dm", policy_version="p",
    )
    used = deadlines.working_days_used(Regime.PIPL, received_at, now)
    expected = "at_risk" if 15 - used <= at_risk_days else "on_time"
    assert deadline_state(record, deadlines, now, at_risk_days) == expected


def test_completion_on_the_last_day_is_on_time(
    accept: Accept, ledger: Ledger, deadlines: Deadlines
) -> None:
    due = datetime(2026, 11, 23, 15, 59, 59, tzinfo=UTC)
    on_time = accept("T-1", at("2026-11-02"), Status.IN_PROGRESS, Status.COMPLETED, done=due)
    late = accept("T-2", at("2026-11-02"), Status.IN_PROGRESS, Status.COMPLETED,
                  done=due + timedelta(seconds=1))
    got = states(requests_frame(ledger, deadlines, now=at("2026-12-01")))
    assert got[on_time] == "completed_on_time"
    assert got[late] == "completed_late"


def test_business_days_across_national_day(
    accept: Accept, ledger: Ledger, deadlines: Deadlines
) -> None:
    # Received Tue 29 Sep 2026, done Mon 12 Oct. Counted by hand on the State Council's
    # 2026 calendar: 30 Sep (1); 1-7 Oct holiday; 8 Oct (2); 9 Oct (3); Sat 10 Oct, a
    # make-up working day (4); Sun 11 Oct off; 12 Oct (5). The day of receipt is not counted.
    done = accept(
        "T-golden-week", at("2026-09-29"), Status.IN_PROGRESS, Status.COMPLETED,
        done=at("2026-10-12"),
    )
    # Still open on 9 Oct: 30 Sep, 8 Oct, 9 Oct.
    open_ = accept("T-open", at("2026-09-29"), Status.IN_PROGRESS)

    frame = requests_frame(ledger, deadlines, now=at("2026-10-09")).set_index("request_id")
    assert frame.loc[done, "business_days_used"] == 5
    assert frame.loc[open_, "business_days_used"] == 3
    # 15 working days from 29 Sep end on Mon 26 Oct.
    assert frame.loc[done, "due_at"] == "2026-10-26T15:59:59+00:00"
    assert frame.loc[done, "deadline_state"] == "completed_on_time"
    assert str(frame["business_days_used"].dtype) == "Int64"


def test_an_open_request_counts_up_to_now(
    world: dict[str, str], ledger: Ledger, deadlines: Deadlines
) -> None:
    frame = requests_frame(ledger, deadlines, now=NOW).set_index("request_id")
    # 2 Nov -> 20 Nov: three full weeks minus the day of receipt: 4 + 5 + 5.
    assert frame.loc[world["at_risk"], "business_days_used"] == 14
    # Completed requests stop counting: 2 Nov -> 10 Nov.
    assert frame.loc[world["completed_on_time"], "business_days_used"] == 6


def _partially_completed_then_retried(accept: Accept, ledger: Ledger) -> str:
    """Partially completed on 5 Nov, run again on NOW (20 Nov); due 23 Nov."""
    request_id = accept(
        "T-retry", at("2026-11-02"), Status.IN_PROGRESS, Status.PARTIALLY_COMPLETED,
        done=at("2026-11-05"),
    )
    ledger.transition(request_id, Status.IN_PROGRESS)
    return request_id


def test_a_request_run_again_after_a_partial_result_keeps_counting(
    accept: Accept, ledger: Ledger, deadlines: Deadlines
) -> None:
    request_id = _partially_completed_then_retried(accept, ledger)

    row = requests_frame(ledger, deadlines, now=NOW).set_index("request_id").loc[request_id]
    assert row["status"] == "in_progress"
    assert row["deadline_state"] == "at_risk"
    assert row["business_days_used"] == 14  # 2 Nov -> 20 Nov, not 2 Nov -> 5 Nov
    assert pd.isna(row["completed_at"])  # it is not complete


def test_a_request_that_fails_on_its_retry_is_not_reported_completed(
    accept: Accept, ledger: Ledger, deadlines: Deadlines
) -> None:
    request_id = _partially_completed_then_retried(accept, ledger)
    ledger.transition(request_id, Status.FAILED)

    row = requests_frame(ledger, deadlines, now=NOW).set_index("request_id").loc[request_id]
    assert row["status"] == "failed"
    # Failed, one working day before its deadline: it needs attention, it is not done.
    assert row["deadline_state"] == "at_risk"


# -- steps --------------------------------------------------------------------------------
def record(ledger: Ledger, rid: str, system: str, action: str, status: StepStatus,
           counts: StepCounts | None = None, error: str | None = None,
           details: dict[str, Any] | None = None) -> None:
    ledger.record_step(rid, system, "sql", action, status, counts, error, details)


def part(found: int = 0, remaining: int = 0, reasons: list[str] | None = None) -> dict[str, Any]:
    """What connectors.base.PartOutcome.as_dict records."""
    return {"found": found, "deleted": 0, "anonymized": 0, "retained": 0,
            "remaining": remaining, "retain_reasons": reasons or [], "statements": ["ab" * 32]}


def test_steps_frame_merges_work_and_verification(accept: Accept, ledger: Ledger) -> None:
    erased = accept("T-1", at("2026-11-02"), Status.IN_PROGRESS)
    collected = accept("T-2", at("2026-11-02"), Status.IN_PROGRESS)

    record(ledger, erased, "userdb", "erase", StepStatus.RUNNING)
    record(ledger, erased, "userdb", "erase", StepStatus.SUCCEEDED,
           StepCounts(found=9, deleted=5, anonymized=2, retained=2),
           details={"users": part(3, reasons=["tax law: orders kept 3 years"]),
                    "orders": part(2, reasons=["tax law: orders kept 3 years", "fraud hold"]),
                    "devices": part(4)})
    record(ledger, erased, "userdb", "verify", StepStatus.SUCCEEDED,
           StepCounts(found=1, remaining=0), details={"users": part(1)})
    record(ledger, erased, "logs", "erase", StepStatus.RUNNING)
    record(ledger, erased, "logs", "erase", StepStatus.FAILED, error="TimeoutError: read")
    record(ledger, collected, "userdb", "collect", StepStatus.SUCCEEDED, StepCounts(found=12),
           details={"users": part(12)})

    frame = steps_frame(ledger)

    assert list(frame.columns) == STEP_COLUMNS
    rows: dict[tuple[Any, Any], Any] = {
        (r.request_id, r.system): r for r in frame.itertuples(index=False)
    }
    assert set(rows) == {(erased, "userdb"), (erased, "logs"), (collected, "userdb")}
    userdb = rows[(erased, "userdb")]
    assert (userdb.kind, userdb.found, userdb.deleted, userdb.anonymized, userdb.retained) == (
        "sql", 9, 5, 2, 2,
    )
    assert userdb.remaining == 0  # from the verification, not the erase
    assert userdb.status == "succeeded"
    assert userdb.reason == "fraud hold; tax law: orders kept 3 years"
    logs = rows[(erased, "logs")]
    assert logs.status == "failed"
    assert logs.reason == "erase: TimeoutError: read"
    assert pd.isna(logs.remaining)
    access = rows[(collected, "userdb")]
    assert access.found == 12
    assert pd.isna(access.remaining)  # nothing to verify for an access request
    assert pd.isna(access.reason)


def test_a_failed_verification_shows_what_remains(accept: Accept, ledger: Ledger) -> None:
    rid = accept("T-1", at("2026-11-02"), Status.IN_PROGRESS)
    record(ledger, rid, "userdb", "erase", StepStatus.SUCCEEDED, StepCounts(found=3, deleted=3))
    record(ledger, rid, "userdb", "verify", StepStatus.FAILED, StepCounts(remaining=2),
           error="2 rows remain after erasure in users", details={"users": part(2, 2)})

    [row] = steps_frame(ledger).itertuples(index=False)
    assert row.deleted == 3
    assert row.remaining == 2
    assert row.status == "failed"
    assert row.reason == "verify: 2 rows remain after erasure in users"


def test_steps_frame_of_an_empty_ledger(ledger: Ledger) -> None:
    frame = steps_frame(ledger)
    assert list(frame.columns) == STEP_COLUMNS
    assert frame.empty


# -- files --------------------------------------------------------------------------------
def test_write_reports_writes_three_files_without_identities(
    world: dict[str, str], ledger: Ledger, deadlines: Deadlines, tmp_path: Path
) -> None:
    record(ledger, world["completed_on_time"], "userdb", "erase", StepStatus.SUCCEEDED,
           StepCounts(found=2, deleted=2), details={"users": part(2)})
    record(ledger, world["completed_on_time"], "userdb", "verify", StepStatus.SUCCEEDED,
           StepCounts(remaining=0))

    paths = write_reports(tmp_path / "out", ledger, deadlines, now=NOW)

    assert set(paths) == {"report.csv", "steps.csv", "report.html"}
    assert all(p.parent == tmp_path / "out" and p.exists() for p in paths.values())
    report = pd.read_csv(paths["report.csv"])
    assert list(report.columns) == REQUEST_COLUMNS
    assert set(report["request_id"]) == set(world.values())
    assert states(report) == states(requests_frame(ledger, deadlines, now=NOW))
    steps = pd.read_csv(paths["steps.csv"])
    assert list(steps.columns) == STEP_COLUMNS
    assert steps["remaining"].tolist() == [0]
    page = paths["report.html"].read_text()
    assert page.startswith("<!doctype html>")
    for ticket_id in ("T-on-time", "T-late", "T-bad"):
        assert ticket_id in page
    assert "overdue: 2" in page  # the summary line counts states
    for path in paths.values():
        text = path.read_text()
        for spelling in IDENTITY_SPELLINGS:
            assert spelling not in text, (path.name, spelling)


def test_markdown_and_html_escape_what_they_show(ledger: Ledger, deadlines: Deadlines) -> None:
    ledger.reject(Rejection("channel: <script>alert(1)</script> & more", ticket_id="T-x"))
    frame = requests_frame(ledger, deadlines, now=NOW)

    page = to_html(frame, steps_frame(ledger))
    assert "<script>" not in page
    assert "&lt;script&gt;" in page

    md = to_markdown(frame).splitlines()
    assert md[0] == "| " + " | ".join(REQUEST_COLUMNS) + " |"
    assert len(md) == 3
    assert "| T-x |" in md[2]
    assert "None" not in md[2] and "nan" not in md[2]  # empty cells are empty
