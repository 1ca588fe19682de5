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
from dsrflow.gates import Gate, GateDecision
from dsrflow.ledger import Ledger, RequestRecord, StepCounts
from dsrflow.model import PartnerStatus, Regime, RequestType, Status, StepAction, StepStatus
from dsrflow.report import (
    REQUEST_COLUMNS,
    STEP_COLUMNS,
    SYSTEM_COLUMNS,
    deadline_state,
    make_filter,
    requests_frame,
    steps_frame,
    systems_frame,
    to_html,
    to_markdown,
    write_reports,
)
from dsrflow.tickets import Rejection, Ticket, parse_ticket

# Friday 20 November 2026, noon in Shanghai.
NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
EMAIL = "Report.Subject@Example.com"
PHONE = "+86 139 1234 5678"
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
    ledger.record_step(rid, system, "sql", StepAction(action), status, counts, error, details)


def part(found: int = 0, remaining: int = 0, reasons: list[str] | None = None) -> dict[str, Any]:
    """What connectors.base.PartOutcome.as_dict records."""
    return {"found": found, "deleted": 0, "anonymized": 0, "retained": 0,
            "remaining": remaining, "retain_reasons": reasons or [], "statements": ["ab" * 32]}


def test_steps_frame_merges_work_and_verification(accept: Accept, ledger: Ledger) -> None:
    erased = accept("T-1", at("2026-11-02"), Status.IN_PROGRESS)
    collected = accept("T-2", at("2026-11-02"), Status.IN_PROGRESS)

    # The look-up of identities comes first in the ledger; the erase is what counts.
    record(ledger, erased, "userdb", "resolve", StepStatus.SUCCEEDED,
           details={"_identities": {"learnt": {"phone": 1}}})
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
    assert userdb.action == "erase" and userdb.status == "succeeded"
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


def test_a_failed_look_up_of_identities_shows_as_the_systems_failure(
    accept: Accept, ledger: Ledger
) -> None:
    rid = accept("T-1", at("2026-11-02"), Status.IN_PROGRESS)
    record(ledger, rid, "userdb", "resolve", StepStatus.FAILED,
           error="identities not resolved: OperationalError")
    record(ledger, rid, "userdb", "erase", StepStatus.SUCCEEDED, StepCounts(found=3, deleted=3))
    [row] = steps_frame(ledger).itertuples(index=False)
    assert (row.action, row.deleted, row.status) == ("erase", 3, "failed")
    assert row.reason == "resolve: identities not resolved: OperationalError"


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

    assert set(paths) == {"report.csv", "steps.csv", "systems.csv", "sweeps.csv",
                          "report.html"}
    assert all(p.parent == tmp_path / "out" and p.exists() for p in paths.values())
    report = pd.read_csv(paths["report.csv"])
    assert list(report.columns) == REQUEST_COLUMNS
    assert set(report["request_id"]) == set(world.values())
    assert states(report) == states(requests_frame(ledger, deadlines, now=NOW))
    steps = pd.read_csv(paths["steps.csv"])
    assert list(steps.columns) == STEP_COLUMNS
    assert steps["remaining"].tolist() == [0]
    systems = pd.read_csv(paths["systems.csv"])
    assert list(systems.columns) == SYSTEM_COLUMNS
    assert systems[["system", "requests", "deleted", "remaining"]].values.tolist() == [
        ["userdb", 1, 2, 0]]
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
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert page.count("<script>") == 1  # the page's own row filter, nothing else

    md = to_markdown(frame).splitlines()
    assert md[0] == "| " + " | ".join(REQUEST_COLUMNS) + " |"
    assert len(md) == 3
    assert "| T-x |" in md[2]
    assert "None" not in md[2] and "nan" not in md[2]  # empty cells are empty


# -- the columns added for extensions, versions and days left -------------------------------
def extend(ledger: Ledger, request_id: str, until: datetime, notice: datetime,
           reason: str) -> None:
    """Store an extension as the ledger keeps it: the report reads what is stored, whatever
    set it (and `Ledger.extend`'s own rules are tested with it)."""
    from sqlalchemy import update

    from dsrflow.ledger.schema import requests

    with ledger.engine.begin() as conn:
        conn.execute(update(requests).where(requests.c.id == request_id).values(
            extended_due_at=until, extension_notice_at=notice, extension_reason=reason))


def test_verification_versions_and_days_left(
    world: dict[str, str], ledger: Ledger, deadlines: Deadlines
) -> None:
    frame = requests_frame(ledger, deadlines, now=NOW).set_index("request_id")
    on_time = frame.loc[world["on_time"]]
    assert on_time["verified_at"] == "2026-11-18T04:03:00+00:00"  # the ticket's, 3 minutes in
    assert (on_time["datamap_version"], on_time["policy_version"]) == ("dm", "p")
    assert frame["verified_at"].isna()[world["awaiting_verification"]]
    assert str(frame["business_days_left"].dtype) == "Int64"
    left = frame["business_days_left"]
    # From Friday 20 Nov: due Mon 23 Nov -> 1; due Wed 9 Dec -> 13; due Wed 18 Nov -> -2
    # (Thursday and Friday have gone by).
    assert left[world["at_risk"]] == 1
    assert left[world["on_time"]] == 13
    assert left[world["awaiting_verification"]] == 13
    assert left[world["overdue"]] == -2
    # Closed, rejected, or without a calendar: nothing to count.
    for name in ("completed_on_time", "completed_late", "not_applicable", "unknown"):
        assert pd.isna(left[world[name]]), name
    rejected = frame.loc[world["not_applicable"]]
    assert pd.isna(rejected["datamap_version"]) and pd.isna(rejected["policy_version"])


def test_an_extension_keeps_the_original_due_date_and_counts_to_the_new_one(
    accept: Accept, ledger: Ledger, deadlines: Deadlines
) -> None:
    # GDPR, received Tue 20 Oct: due Fri 20 Nov, end of day in Dublin (UTC in winter).
    rid = accept("T-gdpr", at("2026-10-20"), Status.IN_PROGRESS, regime="gdpr")
    extend(ledger, rid, datetime(2026, 12, 4, 23, 59, 59, tzinfo=UTC), at("2026-11-02"),
           "three partners to hear from")

    row = requests_frame(ledger, deadlines, now=NOW).set_index("request_id").loc[rid]

    assert row["due_at"] == "2026-11-20T23:59:59+00:00"
    assert row["extended_due_at"] == "2026-12-04T23:59:59+00:00"
    assert row["extension_notice_at"] == "2026-11-02T04:00:00+00:00"
    assert row["extension_reason"] == "three partners to hear from"
    # Mon 23 Nov to Fri 4 Dec on the Irish calendar: two full weeks.
    assert row["business_days_left"] == 10


class Records:
    """A ledger that holds nothing but these records (what `requests_frame` reads)."""

    def __init__(self, records: list[RequestRecord]) -> None:
        self.records = records

    def all(self) -> list[RequestRecord]:
        return self.records

    def holds(self) -> list[object]:
        return []

    def held_parts(self) -> list[dict[str, object]]:
        return []

    def gate_decisions(self) -> dict[str, dict[Gate, GateDecision]]:
        return {}


REGIMES = [Regime.PIPL, Regime.GDPR, Regime.CCPA, Regime.UK_GDPR]


@settings(max_examples=60, deadline=None)
@given(
    cases=st.lists(st.tuples(
        st.sampled_from(REGIMES),
        st.dates(min_value=date(2026, 1, 1), max_value=date(2027, 3, 1)),  # received
        st.integers(min_value=0, max_value=80),  # due, days after receipt
        st.none() | st.integers(min_value=1, max_value=60),  # extended by
        st.integers(min_value=-30, max_value=120),  # the clock, days after receipt
        st.integers(min_value=0, max_value=86_399),  # seconds into those days
        st.none() | st.integers(min_value=-2, max_value=20),  # verified, days after receipt
    ), min_size=1, max_size=8),
)
def test_days_used_and_left_match_the_calendars_day_by_day(
    cases: list[tuple[Regime, date, int, int | None, int, int, int | None]],
) -> None:
    """The frame counts working days for all requests at once; each count equals what the
    regime's calendar gives for that request alone (`Deadlines.working_days_used` from the
    clock's start, `dsrflow.sla.business_days_left`), unknown where the calendar raises:
    China's 2027 is not published."""
    from dsrflow.deadlines import CalendarUnavailable
    from dsrflow.sla import business_days_left

    deadlines = Deadlines()
    now = datetime(2026, 11, 20, 4, tzinfo=UTC)
    records = []
    for i, (regime, received, due_in, extended_by, clock, second, verified_in) in enumerate(
        cases
    ):
        received_at = datetime.combine(received, datetime.min.time(), UTC) + timedelta(
            seconds=second)
        due = received_at + timedelta(days=due_in)
        verified_at = (None if verified_in is None
                       else received_at + timedelta(days=verified_in, hours=5))
        records.append(RequestRecord(
            id=f"r{i}", ticket_id=f"T-{i}", type=RequestType.ERASURE, regime=regime,
            channel="app", scope=None, status=Status.IN_PROGRESS, reason=None,
            received_at=received_at, verified_at=verified_at, due_at=due,
            deadline_error=None, completed_at=None, datamap_version="dm",
            policy_version="p",
            extended_due_at=due + timedelta(days=extended_by) if extended_by else None,
        ))
        now = received_at + timedelta(days=clock, seconds=second)
    frame = requests_frame(Records(records), deadlines, now=now)  # type: ignore[arg-type]

    for record, used, left in zip(records, frame["business_days_used"],
                                  frame["business_days_left"], strict=True):
        assert record.regime is not None
        # UK GDPR's clock waits for verification: no days are used before it starts.
        start = deadlines.clock_start(record.regime, record.received_at, record.verified_at)
        try:
            expected_used: int | None = (
                0 if start is None else deadlines.working_days_used(record.regime, start, now))
        except CalendarUnavailable:
            expected_used = None
        assert (None if pd.isna(used) else used) == expected_used
        expected_left = business_days_left(deadlines, record, now)
        assert (None if pd.isna(left) else left) == expected_left


# -- steps: actions, collections, partners, deliverables ------------------------------------
def test_steps_frame_shows_the_action_what_was_collected_and_the_partner(
    accept: Accept, ledger: Ledger
) -> None:
    access = accept("T-access", at("2026-11-02"), Status.IN_PROGRESS)
    erased = accept("T-erased", at("2026-11-02"), Status.IN_PROGRESS)
    run = {"_run": {"flow_run_id": "f1", "task_run_id": "t1"}}
    record(ledger, access, "userdb", "collect", StepStatus.SUCCEEDED, StepCounts(found=7),
           details={"users": part(7), **run})
    record(ledger, erased, "userdb", "erase", StepStatus.SUCCEEDED,
           StepCounts(found=3, deleted=2, retained=1),
           details={"orders": part(1, reasons=["tax law"]), **run})
    record(ledger, erased, "userdb", "verify", StepStatus.SUCCEEDED, StepCounts(remaining=0))
    ledger.partner_request_id(erased, "adnet", lambda: "11111111-1111-4111-8111-111111111111")
    ledger.update_partner(erased, "adnet", PartnerStatus.AWAITING_CONFIRMATION)
    ledger.record_step(erased, "adnet", "partner", StepAction.ERASE, StepStatus.PENDING_EXTERNAL,
                       error="adnet acknowledged and will report back")
    ledger.record_step(erased, "erasure-certificate", "deliverable", StepAction.CERTIFY,
                       StepStatus.SUCCEEDED,
                       details={"path": "certificates/x.json", "sha256": "ab" * 32,
                                "outcome": "erased", **run})

    rows: dict[tuple[Any, Any], Any] = {
        (r.request_id, r.system): r for r in steps_frame(ledger).itertuples(index=False)
    }

    collect = rows[(access, "userdb")]
    assert (collect.action, collect.found, collect.collected) == ("collect", 7, 7)
    erase = rows[(erased, "userdb")]
    assert (erase.action, erase.deleted, erase.retained, erase.remaining) == ("erase", 2, 1, 0)
    assert pd.isna(erase.collected)  # only collections collect
    assert erase.reason == "tax law"  # the `_run` bookkeeping is no part, and has no reasons
    partner = rows[(erased, "adnet")]
    assert (partner.kind, partner.status, partner.partner_status) == (
        "partner", "pending_external", "awaiting_confirmation")
    assert partner.reason == "erase: adnet acknowledged and will report back"
    assert pd.isna(erase.partner_status)
    certificate = rows[(erased, "erasure-certificate")]
    assert (certificate.kind, certificate.action, certificate.status) == (
        "deliverable", "certify", "succeeded")


def test_systems_frame_sums_the_steps_per_system(accept: Accept, ledger: Ledger) -> None:
    first = accept("T-1", at("2026-11-02"), Status.IN_PROGRESS)
    second = accept("T-2", at("2026-11-02"), Status.IN_PROGRESS)
    access = accept("T-3", at("2026-11-02"), Status.IN_PROGRESS)
    record(ledger, first, "userdb", "erase", StepStatus.SUCCEEDED,
           StepCounts(found=5, deleted=3, anonymized=1, retained=1))
    record(ledger, first, "userdb", "verify", StepStatus.SUCCEEDED, StepCounts(remaining=0))
    record(ledger, second, "userdb", "erase", StepStatus.SUCCEEDED,
           StepCounts(found=2, deleted=2))
    record(ledger, second, "userdb", "verify", StepStatus.FAILED, StepCounts(remaining=1),
           error="1 rows remain")
    record(ledger, second, "logs", "erase", StepStatus.BLOCKED, error="bucket locked")
    record(ledger, access, "userdb", "collect", StepStatus.SUCCEEDED, StepCounts(found=4))
    record(ledger, access, "logs", "collect", StepStatus.PENDING_EXTERNAL, StepCounts(found=0))
    ledger.record_step(access, "access-package", "deliverable", StepAction.DELIVER,
                       StepStatus.SUCCEEDED,
                       details={"location": "packages/p.zip", "sha256": "cd" * 32})
    steps = steps_frame(ledger)

    systems = systems_frame(steps)

    assert list(systems.columns) == SYSTEM_COLUMNS
    assert systems["system"].tolist() == ["logs", "userdb"]  # no deliverables
    userdb = systems.set_index("system").loc["userdb"]
    assert userdb["requests"] == 3
    assert (userdb["found"], userdb["collected"], userdb["deleted"]) == (11, 4, 5)
    assert (userdb["anonymized"], userdb["retained"], userdb["remaining"]) == (1, 1, 1)
    assert (userdb["succeeded"], userdb["failed"], userdb["pending_external"],
            userdb["blocked"]) == (2, 1, 0, 0)
    logs = systems.set_index("system").loc["logs"]
    assert (logs["blocked"], logs["pending_external"]) == (1, 1)
    assert pd.isna(logs["remaining"])  # nothing verified is not "nothing left"
    # The totals are the sums of the steps, deliverables aside.
    work = steps[steps["kind"] != "deliverable"]
    for column in ("found", "collected", "deleted", "anonymized", "retained", "remaining"):
        assert systems[column].sum() == work[column].sum(), column
    assert systems["requests"].sum() == len(work)
    for status in ("succeeded", "failed", "pending_external", "blocked"):
        assert systems[status].sum() == (work["status"] == status).sum(), status


def test_systems_frame_of_no_steps(ledger: Ledger) -> None:
    systems = systems_frame(steps_frame(ledger))
    assert list(systems.columns) == SYSTEM_COLUMNS
    assert systems.empty


def test_write_reports_with_a_filter_narrows_every_file(
    world: dict[str, str], ledger: Ledger, deadlines: Deadlines, tmp_path: Path
) -> None:
    for name in ("completed_on_time", "on_time"):
        record(ledger, world[name], "userdb", "erase", StepStatus.SUCCEEDED,
               StepCounts(found=2, deleted=2))
    record(ledger, world["completed_late"], "logs", "erase", StepStatus.SUCCEEDED,
           StepCounts(found=5, deleted=5))
    chosen = make_filter(statuses=["completed"], received_from="2026-10-01")

    paths = write_reports(tmp_path, ledger, deadlines, now=NOW, filter=chosen)

    report = pd.read_csv(paths["report.csv"])
    assert set(report["request_id"]) == {world["completed_on_time"], world["completed_late"]}
    steps = pd.read_csv(paths["steps.csv"])
    assert set(steps["request_id"]) == set(report["request_id"])  # not the open one's
    systems = pd.read_csv(paths["systems.csv"])
    assert systems[["system", "requests", "deleted"]].values.tolist() == [
        ["logs", 1, 5], ["userdb", 1, 2]]
    page = paths["report.html"].read_text()
    assert "Filter: status: completed · received on or after 2026-10-01 (UTC)" in page
    assert "2 tickets" in page
    assert "T-on-time" not in page
