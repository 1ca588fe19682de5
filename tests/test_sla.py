"""Deadline states on a fixed clock: due dates, working days left and the state of a
request on chosen days, for every regime.

Expected dates are worked out by hand in the comments, from the calendars:

- China 2026 (国务院办公厅关于2026年部分节假日安排的通知): Spring Festival 15–23 Feb off,
  Sat 14 Feb and Sat 28 Feb working; National Day 1–7 Oct off (Mid-Autumn Fri 25 Sep off),
  Sun 20 Sep and Sat 10 Oct working.
- Ireland: St Brigid's Day (first Monday of February, or 1 Feb when a Friday), St Patrick's
  Day 17 Mar, May bank holiday (first Monday of May), Christmas Day and St Stephen's Day.
- UK-wide bank holidays: Spring bank holiday, last Monday of May (25 May 2026).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from dsrflow.deadlines import Deadlines
from dsrflow.ledger import Ledger, RequestRecord
from dsrflow.model import Regime, RequestType, Status
from dsrflow.sla import business_days_left, deadline_state
from dsrflow.tickets import Ticket, Verification
from tests.helpers import ticket

SHANGHAI = ZoneInfo("Asia/Shanghai")
DUBLIN = ZoneInfo("Europe/Dublin")
LONDON = ZoneInfo("Europe/London")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")

DEADLINES = Deadlines()  # one instance: the holiday tables are built once
AT_RISK_DAYS = 3


def local(tz: ZoneInfo, y: int, m: int, d: int, hh: int = 12, mm: int = 0, ss: int = 0) -> datetime:
    """A wall-clock time in `tz`, as UTC."""
    return datetime(y, m, d, hh, mm, ss, tzinfo=tz).astimezone(UTC)


def end_of(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(23, 59, 59), tzinfo=tz).astimezone(UTC)


def record(
    regime: Regime,
    received: datetime,
    *,
    status: Status = Status.VERIFIED,
    due: datetime | None = None,
    extended: datetime | None = None,
    completed: datetime | None = None,
    error: str | None = None,
    verified: datetime | None = None,
) -> RequestRecord:
    """A request as the ledger would hand it over; the due date computed unless given."""
    if due is None and error is None and status is not Status.AWAITING_VERIFICATION:
        due = DEADLINES.due(regime, received)
    return RequestRecord(
        id="00000000-0000-4000-8000-000000000001", ticket_id="T-1", type=RequestType.ERASURE,
        regime=regime, channel="app", scope=None, status=status, reason=None,
        received_at=received, verified_at=verified, due_at=due, deadline_error=error,
        completed_at=completed, datamap_version="dm", policy_version="pol",
        extended_due_at=extended,
    )


def state(rec: RequestRecord, at: datetime, at_risk_days: int = AT_RISK_DAYS) -> str:
    return deadline_state(rec, DEADLINES, at, at_risk_days)


# -- PIPL: 15 working days on the State Council calendar -----------------------------------

# Received Tue 10 Feb 2026: due Mon 9 Mar (test_deadlines counts it out).
CNY = record(Regime.PIPL, local(SHANGHAI, 2026, 2, 10, 10))
# Received Fri 18 Sep 2026: due Thu 15 Oct.
NATIONAL_DAY = record(Regime.PIPL, local(SHANGHAI, 2026, 9, 18, 10))


def test_pipl_due_dates_over_the_holidays() -> None:
    assert CNY.due_at == end_of(date(2026, 3, 9), SHANGHAI)
    assert NATIONAL_DAY.due_at == end_of(date(2026, 10, 15), SHANGHAI)


@pytest.mark.parametrize(
    ("rec", "day", "left", "expected"),
    [
        # Working days after the day, up to 9 Mar: Sat 14 Feb (make-up) = 1; 15..23 off;
        # 24..27 = 5; Sat 28 (make-up) = 6; 2..6 Mar = 11; 9 Mar = 12.
        (CNY, (2026, 2, 13), 12, "on_time"),
        # The make-up Saturday is a working day, and counting starts the day after it.
        (CNY, (2026, 2, 14), 11, "on_time"),
        # Chinese New Year's Eve, a holiday: nothing happens between the 14th and the 24th.
        (CNY, (2026, 2, 16), 11, "on_time"),
        (CNY, (2026, 2, 27), 7, "on_time"),
        (CNY, (2026, 2, 28), 6, "on_time"),
        # 4, 5, 6, 9 March: one more than the threshold.
        (CNY, (2026, 3, 3), 4, "on_time"),
        # 5, 6, 9 March: exactly the threshold.
        (CNY, (2026, 3, 4), 3, "at_risk"),
        (CNY, (2026, 3, 9), 0, "at_risk"),
        # National Day: 1..7 Oct off; 8, 9, Sat 10 (make-up), 12..15 = 7.
        (NATIONAL_DAY, (2026, 9, 30), 7, "on_time"),
        (NATIONAL_DAY, (2026, 10, 9), 5, "on_time"),
        # Sat 10 Oct is a working day: from it, 12..15 are left.
        (NATIONAL_DAY, (2026, 10, 10), 4, "on_time"),
        (NATIONAL_DAY, (2026, 10, 11), 4, "on_time"),
        (NATIONAL_DAY, (2026, 10, 12), 3, "at_risk"),
    ],
)
def test_pipl_working_days_left_and_state(
    rec: RequestRecord, day: tuple[int, int, int], left: int, expected: str
) -> None:
    at = local(SHANGHAI, *day)
    assert business_days_left(DEADLINES, rec, at) == left
    assert state(rec, at) == expected


@pytest.mark.parametrize(
    ("rec", "at_risk_days", "before", "on"),
    [
        # 11 working days left from Sat 14 Feb (a make-up day), 12 from Fri 13 Feb.
        (CNY, 11, (2026, 2, 13), (2026, 2, 14)),
        # 4 left from Sat 10 Oct (a make-up day), 5 from Fri 9 Oct.
        (NATIONAL_DAY, 4, (2026, 10, 9), (2026, 10, 10)),
        (CNY, 3, (2026, 3, 3), (2026, 3, 4)),
    ],
)
def test_at_risk_starts_at_exactly_n_working_days_left(
    rec: RequestRecord, at_risk_days: int, before: tuple[int, int, int],
    on: tuple[int, int, int],
) -> None:
    assert business_days_left(DEADLINES, rec, local(SHANGHAI, *before)) == at_risk_days + 1
    assert state(rec, local(SHANGHAI, *before), at_risk_days) == "on_time"
    assert business_days_left(DEADLINES, rec, local(SHANGHAI, *on)) == at_risk_days
    assert state(rec, local(SHANGHAI, *on), at_risk_days) == "at_risk"


def test_pipl_overdue_one_second_after_the_end_of_the_day_in_shanghai() -> None:
    assert CNY.due_at is not None
    last_second = local(SHANGHAI, 2026, 3, 9, 23, 59, 59)
    assert CNY.due_at == last_second
    assert state(CNY, last_second) == "at_risk"
    assert state(CNY, last_second + timedelta(seconds=1)) == "overdue"
    # Tue 10 Mar is the first working day past the due date.
    assert business_days_left(DEADLINES, CNY, last_second + timedelta(seconds=1)) == -1
    # 16:00 UTC on 9 Mar is already midnight in Shanghai.
    assert last_second + timedelta(seconds=1) == datetime(2026, 3, 9, 16, 0, tzinfo=UTC)


def test_pipl_awaiting_verification_runs_the_clock() -> None:
    waiting = record(Regime.PIPL, CNY.received_at, status=Status.AWAITING_VERIFICATION,
                     due=CNY.due_at)
    assert state(waiting, local(SHANGHAI, 2026, 2, 13)) == "awaiting_verification"
    assert state(waiting, local(SHANGHAI, 2026, 3, 4)) == "at_risk"
    assert state(waiting, local(SHANGHAI, 2026, 3, 10)) == "overdue"


# -- GDPR: one month, Irish calendar --------------------------------------------------------
@pytest.mark.parametrize(
    ("received", "due_day"),
    [
        # No 31 February: the month's last day (a Friday in 2025).
        ((2025, 1, 31), date(2025, 2, 28)),
        # Leap year: 29 February 2028, a Tuesday.
        ((2028, 1, 31), date(2028, 2, 29)),
        # Sat 28 Feb 2026 -> Mon 2 Mar.
        ((2026, 1, 31), date(2026, 3, 2)),
        # Mon 2 Feb 2026 is St Brigid's Day -> Tue 3 Feb.
        ((2026, 1, 2), date(2026, 2, 3)),
        # Tue 17 Mar 2026 is St Patrick's Day -> Wed 18 Mar.
        ((2026, 2, 17), date(2026, 3, 18)),
        # Thu 25 Dec 2025 Christmas, Fri 26 St Stephen's, then a weekend -> Mon 29 Dec.
        ((2025, 11, 25), date(2025, 12, 29)),
    ],
)
def test_gdpr_due_one_month_later_on_a_working_day(
    received: tuple[int, int, int], due_day: date
) -> None:
    assert DEADLINES.due(Regime.GDPR, local(DUBLIN, *received, 10)) == end_of(due_day, DUBLIN)


@pytest.mark.parametrize(
    ("received", "cap_day"),
    [
        # 30 Nov + 3 months: no 30 Feb; Sat 28 Feb 2026 -> Mon 2 Mar.
        ((2025, 11, 30), date(2026, 3, 2)),
        # Leap year: 29 Feb 2028, a Tuesday, from 29 and from 30 Nov 2027.
        ((2027, 11, 29), date(2028, 2, 29)),
        ((2027, 11, 30), date(2028, 2, 29)),
        # Not a leap year: Sun 28 Feb 2027 -> Mon 1 Mar.
        ((2026, 11, 30), date(2027, 3, 1)),
        # Sun 30 Apr 2028, then Mon 1 May, the May bank holiday -> Tue 2 May.
        ((2028, 1, 31), date(2028, 5, 2)),
        ((2026, 9, 1), date(2026, 12, 1)),
    ],
)
def test_gdpr_extension_cap_is_the_rule_applied_to_three_months(
    received: tuple[int, int, int], cap_day: date
) -> None:
    start = local(DUBLIN, *received, 10)
    assert DEADLINES.extension_cap(Regime.GDPR, start) == end_of(cap_day, DUBLIN)
    assert DEADLINES.extension_cap(Regime.UK_GDPR, local(LONDON, *received, 10)) is not None


def test_gdpr_end_of_day_follows_dublin_summer_time() -> None:
    # 2 May 2028 is in Irish summer time (UTC+1): the day ends at 22:59:59 UTC.
    cap = DEADLINES.extension_cap(Regime.GDPR, local(DUBLIN, 2028, 1, 31, 10))
    assert cap == datetime(2028, 5, 2, 22, 59, 59, tzinfo=UTC)


def test_pipl_allows_no_extension() -> None:
    assert DEADLINES.extension_cap(Regime.PIPL, CNY.received_at) is None


def test_gdpr_states_through_the_month() -> None:
    rec = record(Regime.GDPR, local(DUBLIN, 2026, 1, 2, 10))  # due Tue 3 Feb (above)
    assert state(rec, local(DUBLIN, 2026, 1, 20)) == "on_time"
    # 27, 28, 29, 30 Jan, 3 Feb (2 Feb is St Brigid's Day): 5 left.
    assert business_days_left(DEADLINES, rec, local(DUBLIN, 2026, 1, 26)) == 5
    # 30 Jan and 3 Feb: 2 left.
    assert state(rec, local(DUBLIN, 2026, 1, 29)) == "at_risk"
    assert state(rec, local(DUBLIN, 2026, 2, 3, 23, 59, 59)) == "at_risk"
    assert state(rec, local(DUBLIN, 2026, 2, 4, 0, 0, 0)) == "overdue"


# -- UK GDPR: as GDPR, on the GB calendar, from identification ------------------------------
def test_uk_gdpr_clock_starts_at_verification() -> None:
    received = local(LONDON, 2026, 4, 1, 9)
    assert DEADLINES.clock_waits_for_verification(Regime.UK_GDPR)
    assert not any(
        DEADLINES.clock_waits_for_verification(r) for r in (Regime.PIPL, Regime.GDPR, Regime.CCPA)
    )
    assert DEADLINES.clock_start(Regime.UK_GDPR, received, None) is None
    verified = local(LONDON, 2026, 4, 8, 15)
    assert DEADLINES.clock_start(Regime.UK_GDPR, received, verified) == verified
    # A verification older than the request (an app session) starts nothing before it.
    earlier = received - timedelta(days=2)
    assert DEADLINES.clock_start(Regime.UK_GDPR, received, earlier) == received
    for regime in (Regime.PIPL, Regime.GDPR, Regime.CCPA):
        assert DEADLINES.clock_start(regime, received, None) == received
        assert DEADLINES.clock_start(regime, received, verified) == received


def test_uk_gdpr_uses_the_gb_calendar_and_london_time() -> None:
    # 23:30 UTC on Fri 24 Apr 2026 is 00:30 on Sat 25 Apr in London (BST). One month:
    # Mon 25 May, the UK-wide Spring bank holiday -> Tue 26 May, end of day in London.
    start = datetime(2026, 4, 24, 23, 30, tzinfo=UTC)
    assert DEADLINES.due(Regime.UK_GDPR, start) == end_of(date(2026, 5, 26), LONDON)
    assert DEADLINES.due(Regime.UK_GDPR, start) == datetime(2026, 5, 26, 22, 59, 59, tzinfo=UTC)
    # Dublin is on UTC+1 as well, so the same day; but Ireland works on 25 May 2026 (its
    # June bank holiday is 1 June).
    assert DEADLINES.due(Regime.GDPR, start) == end_of(date(2026, 5, 25), DUBLIN)
    # Three months: Sat 25 Jul -> Mon 27 Jul.
    assert DEADLINES.extension_cap(Regime.UK_GDPR, start) == end_of(date(2026, 7, 27), LONDON)


# -- CCPA: 45 calendar days, +45 ------------------------------------------------------------
def test_ccpa_due_and_cap() -> None:
    received = local(LOS_ANGELES, 2026, 9, 1, 10)
    # 1 Sep + 45 days = 16 Oct (PDT, UTC-7); + 90 days = 30 Nov (PST, UTC-8).
    assert DEADLINES.due(Regime.CCPA, received) == datetime(2026, 10, 17, 6, 59, 59, tzinfo=UTC)
    assert DEADLINES.extension_cap(Regime.CCPA, received) == datetime(
        2026, 12, 1, 7, 59, 59, tzinfo=UTC
    )


def test_ccpa_clock_runs_while_awaiting_verification() -> None:
    received = local(LOS_ANGELES, 2026, 9, 1, 10)
    waiting = record(Regime.CCPA, received, status=Status.AWAITING_VERIFICATION,
                     due=DEADLINES.due(Regime.CCPA, received))
    assert state(waiting, local(LOS_ANGELES, 2026, 9, 10)) == "awaiting_verification"
    # Wed 14, Thu 15, Fri 16 Oct left.
    assert state(waiting, local(LOS_ANGELES, 2026, 10, 13)) == "at_risk"
    assert state(waiting, local(LOS_ANGELES, 2026, 10, 16, 23, 59, 59)) == "at_risk"
    assert state(waiting, local(LOS_ANGELES, 2026, 10, 17, 0, 0, 0)) == "overdue"


# -- precedence -----------------------------------------------------------------------------
GDPR_RECEIVED = local(DUBLIN, 2026, 9, 1, 10)  # due Thu 1 Oct, cap Tue 1 Dec
EXTENDED_TO = end_of(date(2026, 11, 16), DUBLIN)


def test_rejected_is_not_applicable_whatever_its_dates() -> None:
    rejected = record(Regime.GDPR, GDPR_RECEIVED, status=Status.REJECTED)
    assert state(rejected, GDPR_RECEIVED + timedelta(days=400)) == "not_applicable"


@pytest.mark.parametrize(
    ("completed", "extended", "expected"),
    [
        (local(DUBLIN, 2026, 9, 30), None, "completed_on_time"),
        (local(DUBLIN, 2026, 10, 2), None, "completed_late"),
        # Late by the original date, on time by the extended one.
        (local(DUBLIN, 2026, 10, 2), EXTENDED_TO, "completed_on_time"),
        (EXTENDED_TO, EXTENDED_TO, "completed_on_time"),
        (EXTENDED_TO + timedelta(seconds=1), EXTENDED_TO, "completed_late"),
    ],
)
def test_completion_is_judged_against_the_effective_due_date(
    completed: datetime, extended: datetime | None, expected: str
) -> None:
    rec = record(Regime.GDPR, GDPR_RECEIVED, status=Status.COMPLETED, completed=completed,
                 extended=extended)
    # Judged once and for all: the report's clock does not matter.
    assert state(rec, completed + timedelta(days=365)) == expected


def test_an_extended_request_is_extended_until_it_is_at_risk() -> None:
    rec = record(Regime.GDPR, GDPR_RECEIVED, extended=EXTENDED_TO)
    # Past the original due date, well before the extended one.
    assert state(rec, local(DUBLIN, 2026, 10, 20)) == "extended"
    assert business_days_left(DEADLINES, rec, local(DUBLIN, 2026, 11, 12)) == 2  # 13, 16
    assert state(rec, local(DUBLIN, 2026, 11, 12)) == "at_risk"
    assert state(rec, EXTENDED_TO + timedelta(seconds=1)) == "overdue"
    waiting = record(Regime.GDPR, GDPR_RECEIVED, status=Status.AWAITING_VERIFICATION,
                     due=rec.due_at, extended=EXTENDED_TO)
    assert state(waiting, local(DUBLIN, 2026, 10, 20)) == "extended"


def test_a_failed_request_is_still_on_the_clock() -> None:
    # FAILED is not an open status, but it is not finished either: it runs again.
    rec = record(Regime.GDPR, GDPR_RECEIVED, status=Status.FAILED)
    assert state(rec, local(DUBLIN, 2026, 9, 10)) == "on_time"
    assert state(rec, local(DUBLIN, 2026, 10, 2)) == "overdue"


def test_no_due_date_is_unknown_unless_the_clock_waits_for_verification() -> None:
    error = "the CN working-day calendar for 2027 is not published"
    unknown = record(Regime.PIPL, CNY.received_at, error=error)
    assert state(unknown, CNY.received_at) == "unknown"
    assert business_days_left(DEADLINES, unknown, CNY.received_at) is None
    pipl_waiting = record(Regime.PIPL, CNY.received_at, status=Status.AWAITING_VERIFICATION,
                          error=error)
    assert state(pipl_waiting, CNY.received_at) == "unknown"
    uk_waiting = record(Regime.UK_GDPR, local(LONDON, 2026, 3, 2, 10),
                        status=Status.AWAITING_VERIFICATION)
    assert uk_waiting.due_at is None
    # Long after a month from receipt: not overdue, because the clock has not started.
    assert state(uk_waiting, local(LONDON, 2026, 9, 1)) == "awaiting_verification"


# -- the ledger: UK GDPR waits, the others run ------------------------------------------------
def make_ticket(
    ticket_id: str, regime: Regime, received: datetime, verified_at: datetime | None
) -> Ticket:
    """A ticket with fixed times (copied in, so the wall clock's 'not in the future' check
    does not decide which dates a test may use)."""
    doc: dict[str, Any] = ticket(
        ticket_id, "erasure", [{"type": "email", "value": f"{ticket_id.lower()}@example.org"}],
        regime=regime.value,
    )
    return Ticket.model_validate(doc).model_copy(update={
        "received_at": received,
        "verification": Verification.model_construct(method="sms_code",
                                                     verified_at=verified_at),
    })


def test_uk_gdpr_unverified_has_no_due_date_until_verified(ledger: Ledger) -> None:
    received = local(LONDON, 2026, 4, 1, 9)
    request_id, _ = ledger.accept(make_ticket("T-uk", Regime.UK_GDPR, received, None), "d", "p")
    waiting = ledger.get(request_id)
    assert waiting.status is Status.AWAITING_VERIFICATION
    assert (waiting.due_at, waiting.deadline_error, waiting.effective_due_at) == (None, None, None)
    months_later = local(LONDON, 2026, 8, 1)
    assert deadline_state(waiting, DEADLINES, months_later, AT_RISK_DAYS) == (
        "awaiting_verification"
    )
    assert business_days_left(DEADLINES, waiting, months_later) is None

    # Verified 23:30 UTC on 24 Apr, 00:30 on 25 Apr in London: due Tue 26 May (above).
    ledger.mark_verified(request_id, "id_document", datetime(2026, 4, 24, 23, 30, tzinfo=UTC))

    verified = ledger.get(request_id)
    assert verified.status is Status.VERIFIED
    assert verified.verified_at == datetime(2026, 4, 24, 23, 30, tzinfo=UTC)
    assert verified.due_at == end_of(date(2026, 5, 26), LONDON)
    assert deadline_state(verified, DEADLINES, local(LONDON, 2026, 5, 1), AT_RISK_DAYS) == (
        "on_time"
    )
    assert deadline_state(verified, DEADLINES, local(LONDON, 2026, 5, 27, 0, 0, 0),
                          AT_RISK_DAYS) == "overdue"
    assert ledger.verify_audit_chain() is None


def test_uk_gdpr_verified_on_arrival_counts_from_the_later_of_the_two(ledger: Ledger) -> None:
    # Received 22:00 on Tue 31 Mar, verified 09:00 on Wed 1 Apr (London): from 1 Apr,
    # one month is Fri 1 May; from receipt it would be Thu 30 Apr.
    received = local(LONDON, 2026, 3, 31, 22)
    verified = local(LONDON, 2026, 4, 1, 9)
    request_id, _ = ledger.accept(
        make_ticket("T-uk2", Regime.UK_GDPR, received, verified), "d", "p"
    )
    assert ledger.get(request_id).due_at == end_of(date(2026, 5, 1), LONDON)


@pytest.mark.parametrize("regime", [Regime.PIPL, Regime.GDPR, Regime.CCPA])
def test_other_regimes_start_the_clock_at_receipt_even_unverified(
    ledger: Ledger, regime: Regime
) -> None:
    received = local(SHANGHAI, 2026, 2, 10, 10)
    request_id, _ = ledger.accept(make_ticket("T-run", regime, received, None), "d", "p")
    assert ledger.get(request_id).due_at == DEADLINES.due(regime, received)

    ledger.mark_verified(request_id, "sms_code", received + timedelta(days=20))

    # Verification does not move a running clock.
    assert ledger.get(request_id).due_at == DEADLINES.due(regime, received)


def test_uk_gdpr_days_used_count_from_verification(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the clock waits for identification, so does the count of days used: in the
    state functions, the report's frame and the request's page alike. No UK-wide bank
    holiday falls in March 2026."""
    from dsrflow.ledger import store
    from dsrflow.report import build_request_view, requests_frame
    from dsrflow.sla import business_days_used

    received = local(LONDON, 2026, 3, 2, 10)  # Mon 2 Mar
    uk, _ = ledger.accept(make_ticket("T-uk", Regime.UK_GDPR, received, None), "d", "p")
    pipl, _ = ledger.accept(make_ticket("T-cn", Regime.PIPL, received, None), "d", "p")

    def used(request_id: str, at: datetime) -> tuple[Any, ...]:
        frame = requests_frame(ledger, DEADLINES, now=at).set_index("request_id")
        facts = dict(build_request_view(ledger, DEADLINES, request_id, now=at).facts)
        record = ledger.get(request_id)
        return (business_days_used(DEADLINES, record, record.completed_at or at),
                frame.at[request_id, "business_days_used"], facts["business days used"])

    # Not verified on Fri 13 Mar: UK GDPR's clock has not started; PIPL's runs from receipt.
    assert used(uk, local(LONDON, 2026, 3, 13, 16)) == (0, 0, "0")
    assert used(pipl, local(LONDON, 2026, 3, 13, 16)) == (9, 9, "9")

    # Verified Mon 16 Mar: on Fri 20 Mar, 17..20 are four days used (from receipt: 14).
    for request_id in (uk, pipl):
        ledger.mark_verified(request_id, "id_document", local(LONDON, 2026, 3, 16, 10))
    assert used(uk, local(LONDON, 2026, 3, 20, 16)) == (4, 4, "4")
    # Completed that Friday: the count stops there.
    monkeypatch.setattr(store, "now", lambda: local(LONDON, 2026, 3, 20, 16))
    ledger.transition(uk, Status.IN_PROGRESS)
    ledger.transition(uk, Status.COMPLETED)
    assert used(uk, local(LONDON, 2026, 4, 20, 16)) == (4, 4, "4")
