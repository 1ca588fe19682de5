"""Deadlines on fixed dates, checked against calendars written out by hand.

The expected working days below are typed in from the State Council's notices, not
recomputed with the code under test:

- 国务院办公厅关于2025年部分节假日安排的通知 (国办发明电〔2024〕12号)
- 国务院办公厅关于2026年部分节假日安排的通知 (published November 2025)

GDPR dates use Ireland's public holidays (Organisation of Working Time Act 1997,
Schedule 2, as amended for St Brigid's Day from 2023).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsrflow.deadlines import (
    CalendarOverrides,
    CalendarUnavailable,
    Deadlines,
    add_months,
)
from dsrflow.model import Regime

SHANGHAI = ZoneInfo("Asia/Shanghai")
DUBLIN = ZoneInfo("Europe/Dublin")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")


def _days(first: date, last: date) -> set[date]:
    return {first + timedelta(days=i) for i in range((last - first).days + 1)}


# -- the State Council calendar, typed in from the notices -------------------------------

# Days off (放假), whatever the weekday.
CN_DAYS_OFF: set[date] = (
    # 2025
    {date(2025, 1, 1)}  # 元旦: 1月1日(周三)放假1天，不调休
    | _days(date(2025, 1, 28), date(2025, 2, 4))  # 春节: 1月28日至2月4日，共8天
    | _days(date(2025, 4, 4), date(2025, 4, 6))  # 清明节: 4月4日至6日
    | _days(date(2025, 5, 1), date(2025, 5, 5))  # 劳动节: 5月1日至5日
    | _days(date(2025, 5, 31), date(2025, 6, 2))  # 端午节: 5月31日至6月2日
    | _days(date(2025, 10, 1), date(2025, 10, 8))  # 国庆节、中秋节: 10月1日至8日
    # 2026
    | _days(date(2026, 1, 1), date(2026, 1, 3))  # 元旦: 1月1日至3日
    | _days(date(2026, 2, 15), date(2026, 2, 23))  # 春节: 2月15日至23日，共9天
    | _days(date(2026, 4, 4), date(2026, 4, 6))  # 清明节: 4月4日至6日
    | _days(date(2026, 5, 1), date(2026, 5, 5))  # 劳动节: 5月1日至5日
    | _days(date(2026, 6, 19), date(2026, 6, 21))  # 端午节: 6月19日至21日
    | _days(date(2026, 9, 25), date(2026, 9, 27))  # 中秋节: 9月25日至27日
    | _days(date(2026, 10, 1), date(2026, 10, 7))  # 国庆节: 10月1日至7日
)

# Make-up working days (上班) that fall on a weekend.
CN_MAKEUP_WORKDAYS: set[date] = {
    date(2025, 1, 26),  # 春节: 1月26日(周日)上班
    date(2025, 2, 8),  # 春节: 2月8日(周六)上班
    date(2025, 4, 27),  # 劳动节: 4月27日(周日)上班
    date(2025, 9, 28),  # 国庆节: 9月28日(周日)上班
    date(2025, 10, 11),  # 国庆节: 10月11日(周六)上班
    date(2026, 1, 4),  # 元旦: 1月4日(周日)上班
    date(2026, 2, 14),  # 春节: 2月14日(周六)上班
    date(2026, 2, 28),  # 春节: 2月28日(周六)上班
    date(2026, 5, 9),  # 劳动节: 5月9日(周六)上班
    date(2026, 9, 20),  # 国庆节: 9月20日(周日)上班
    date(2026, 10, 10),  # 国庆节: 10月10日(周六)上班
}


def cn_working_day(day: date) -> bool:
    assert day.year in (2025, 2026), f"the hand-written calendar does not cover {day}"
    if day in CN_MAKEUP_WORKDAYS:
        return True
    return day.weekday() < 5 and day not in CN_DAYS_OFF


def test_hand_written_calendar_matches_the_notice_examples() -> None:
    # Guards the oracle itself against typos: the facts quoted in the brief.
    assert date(2026, 2, 14).weekday() == 5 and cn_working_day(date(2026, 2, 14))
    assert date(2026, 2, 28).weekday() == 5 and cn_working_day(date(2026, 2, 28))
    assert not any(cn_working_day(d) for d in _days(date(2026, 2, 15), date(2026, 2, 23)))
    assert not any(cn_working_day(d) for d in _days(date(2026, 10, 1), date(2026, 10, 7)))


DEADLINES = Deadlines()  # one instance: the holiday tables are built once


def shanghai(y: int, m: int, d: int, hh: int = 10, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, tzinfo=SHANGHAI).astimezone(UTC)


def end_of_day_utc(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(23, 59, 59), tzinfo=tz).astimezone(UTC)


# -- PIPL --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("received", "due_day"),
    [
        # Chinese New Year 2026. Received Tue 10 Feb. Working days: 11, 12, 13, Sat 14
        # (make-up) = 4; 15..23 off; 24, 25, 26, 27, Sat 28 (make-up) = 9; Mar 2..6 = 14;
        # Mon 9 Mar = 15.
        (shanghai(2026, 2, 10), date(2026, 3, 9)),
        # Received on a holiday (Tue 17 Feb, 春节): 24..27, Sat 28 = 5; Mar 2..6 = 10;
        # Mar 9..13 = 15.
        (shanghai(2026, 2, 17), date(2026, 3, 13)),
        # Received on the make-up Saturday 14 Feb: the same count as from the 17th.
        (shanghai(2026, 2, 14), date(2026, 3, 13)),
        # National Day 2026. Received Fri 18 Sep. Sat 19 off; Sun 20 (make-up) = 1;
        # 21..24 = 5; Fri 25 (中秋) off; 28, 29, 30 = 8; Oct 1..7 off; 8, 9, Sat 10
        # (make-up) = 11; 12, 13, 14, 15 = 15.
        (shanghai(2026, 9, 18), date(2026, 10, 15)),
        # Received on a National Day holiday (Sat 3 Oct): 8, 9, Sat 10 = 3; 12..16 = 8;
        # 19..23 = 13; 26, 27 = 15.
        (shanghai(2026, 10, 3), date(2026, 10, 27)),
        # Received on an ordinary weekend (Sat 7 Mar): 9..13, 16..20, 23..27.
        (shanghai(2026, 3, 7), date(2026, 3, 27)),
        # Chinese New Year 2025. Received Fri 24 Jan. Sat 25 off; Sun 26 (make-up) = 1;
        # Mon 27 = 2; 28 Jan..4 Feb off; 5, 6, 7, Sat 8 (make-up) = 6; 10..14 = 11;
        # 17, 18, 19, 20 = 15.
        (shanghai(2025, 1, 24), date(2025, 2, 20)),
    ],
    ids=[
        "cny-2026",
        "on-holiday",
        "on-makeup-saturday",
        "national-day-2026",
        "on-national-day",
        "on-weekend",
        "cny-2025",
    ],
)
def test_pipl_due_is_end_of_15th_working_day(received: datetime, due_day: date) -> None:
    due = DEADLINES.due(Regime.PIPL, received)
    assert due == end_of_day_utc(due_day, SHANGHAI)
    assert due.utcoffset() == timedelta(0), "due must be returned in UTC"
    # 23:59:59 in Shanghai is 15:59:59 UTC (China has no daylight saving time).
    assert (due.hour, due.minute, due.second) == (15, 59, 59)


def test_pipl_receipt_date_is_the_shanghai_date_not_the_utc_date() -> None:
    # Thu 5 Mar 2026 15:59:59 UTC is Thu 23:59:59 in Shanghai: the day after is Fri 6,
    # then 9..13, 16..20, 23..26 -> the 15th working day is Thu 26 Mar.
    before_midnight = datetime(2026, 3, 5, 15, 59, 59, tzinfo=UTC)
    # One second later it is already Fri 6 Mar in Shanghai (still Thu 5 in UTC):
    # 9..13, 16..20, 23..27 -> Fri 27 Mar.
    after_midnight = datetime(2026, 3, 5, 16, 0, 0, tzinfo=UTC)
    assert DEADLINES.due(Regime.PIPL, before_midnight) == datetime(
        2026, 3, 26, 15, 59, 59, tzinfo=UTC
    )
    assert DEADLINES.due(Regime.PIPL, after_midnight) == datetime(
        2026, 3, 27, 15, 59, 59, tzinfo=UTC
    )


def test_pipl_accepts_receipt_in_any_time_zone() -> None:
    same_moment = datetime(2026, 2, 10, 3, 0, tzinfo=UTC)
    in_new_york = same_moment.astimezone(ZoneInfo("America/New_York"))  # still 9 Feb there
    assert DEADLINES.due(Regime.PIPL, in_new_york) == DEADLINES.due(Regime.PIPL, same_moment)
    assert DEADLINES.due(Regime.PIPL, same_moment) == end_of_day_utc(date(2026, 3, 9), SHANGHAI)


def test_pipl_deadline_running_into_2027_is_an_error_not_a_guess() -> None:
    # Received Tue 15 Dec 2026: 16..18, 21..25, 28..31 are 12 working days; the 13th would
    # be in 2027, whose State Council notice the installed package does not have.
    with pytest.raises(CalendarUnavailable, match="2027"):
        DEADLINES.due(Regime.PIPL, shanghai(2026, 12, 15))


def test_pipl_receipt_in_2027_is_an_error() -> None:
    with pytest.raises(CalendarUnavailable, match="2027"):
        Deadlines().due(Regime.PIPL, shanghai(2027, 3, 1))


def test_pipl_deadline_ending_in_late_2026_needs_no_2027_calendar() -> None:
    # Received Tue 1 Dec 2026: 2..4 = 3, 7..11 = 8, 14..18 = 13, 21, 22 = 15.
    assert DEADLINES.due(Regime.PIPL, shanghai(2026, 12, 1)) == end_of_day_utc(
        date(2026, 12, 22), SHANGHAI
    )


def _write_overrides(tmp_path: Path, text: str) -> CalendarOverrides:
    path = tmp_path / "calendar_overrides.yaml"
    path.write_text(text)
    return CalendarOverrides.load(path)


def test_override_file_makes_2027_computable(tmp_path: Path) -> None:
    # A hypothetical 2027 notice: New Year's Day (Fri 1 Jan) off, no make-up day.
    overrides = _write_overrides(
        tmp_path,
        "CN:\n  2027:\n    holidays: [2027-01-01]\n    workdays: []\n",
    )
    deadlines = Deadlines(overrides)
    # Received Tue 15 Dec 2026: 12 working days to 31 Dec; Fri 1 Jan off (override);
    # Mon 4 = 13, Tue 5 = 14, Wed 6 = 15.
    assert deadlines.due(Regime.PIPL, shanghai(2026, 12, 15)) == end_of_day_utc(
        date(2027, 1, 6), SHANGHAI
    )


def test_override_make_up_workday_counts(tmp_path: Path) -> None:
    # Hypothetical: Sat 2 Jan 2027 declared a make-up working day.
    overrides = _write_overrides(
        tmp_path,
        "CN:\n  2027:\n    holidays: [2027-01-01]\n    workdays: [2027-01-02]\n",
    )
    deadlines = Deadlines(overrides)
    # 12 working days to 31 Dec; Sat 2 Jan = 13; Mon 4 = 14; Tue 5 = 15.
    assert deadlines.due(Regime.PIPL, shanghai(2026, 12, 15)) == end_of_day_utc(
        date(2027, 1, 5), SHANGHAI
    )
    cal = deadlines.calendar(Regime.PIPL)
    assert cal.is_working_day(date(2027, 1, 2))
    assert not cal.is_working_day(date(2027, 1, 1))
    assert not cal.is_working_day(date(2027, 1, 3))  # an ordinary Sunday


def test_override_for_one_year_does_not_unlock_the_next(tmp_path: Path) -> None:
    overrides = _write_overrides(tmp_path, "CN:\n  2027:\n    holidays: [2027-01-01]\n")
    with pytest.raises(CalendarUnavailable, match="2028"):
        Deadlines(overrides).due(Regime.PIPL, shanghai(2027, 12, 20))


def test_override_loading_rejects_bad_files_naming_the_file(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("CN: [unclosed\n")
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        CalendarOverrides.load(bad_yaml)
    bad_key = tmp_path / "typo.yaml"
    bad_key.write_text("CN:\n  2027:\n    holiday: [2027-01-01]\n")  # 'holiday' typo
    with pytest.raises(ValueError, match=r"typo\.yaml"):
        CalendarOverrides.load(bad_key)
    assert CalendarOverrides.load(None).countries == {}


# -- GDPR --------------------------------------------------------------------------------


def dublin(y: int, m: int, d: int, hh: int = 12) -> datetime:
    return datetime(y, m, d, hh, tzinfo=DUBLIN).astimezone(UTC)


@pytest.mark.parametrize(
    ("received", "due_day"),
    [
        # Fri 31 Jan 2025 -> no 31 Feb -> Fri 28 Feb 2025, a working day.
        (dublin(2025, 1, 31), date(2025, 2, 28)),
        # Leap year: Mon 31 Jan 2028 -> Tue 29 Feb 2028.
        (dublin(2028, 1, 31), date(2028, 2, 29)),
        # Sat 31 Jan 2026 -> Sat 28 Feb 2026 -> next working day Mon 2 Mar.
        (dublin(2026, 1, 31), date(2026, 3, 2)),
        # Same date next month: Sun 15 Mar 2026 -> Wed 15 Apr 2026.
        (dublin(2026, 3, 15), date(2026, 4, 15)),
        # Lands on St Patrick's Day (Tue 17 Mar 2026) -> Wed 18 Mar.
        (dublin(2026, 2, 17), date(2026, 3, 18)),
        # Lands on St Brigid's Day (first Monday of Feb: Mon 2 Feb 2026) -> Tue 3 Feb.
        (dublin(2026, 1, 2), date(2026, 2, 3)),
        # Christmas Thu 25 Dec 2025, St Stephen's Fri 26, weekend -> Mon 29 Dec.
        (dublin(2025, 11, 25), date(2025, 12, 29)),
        # Across the year end, onto New Year's Day (Fri 1 Jan 2027) -> Mon 4 Jan 2027.
        (dublin(2026, 12, 1), date(2027, 1, 4)),
    ],
    ids=[
        "jan31-2025",
        "jan31-leap-2028",
        "weekend",
        "same-date",
        "st-patrick",
        "st-brigid",
        "christmas-chain",
        "new-year",
    ],
)
def test_gdpr_one_month_rule(received: datetime, due_day: date) -> None:
    assert DEADLINES.due(Regime.GDPR, received) == end_of_day_utc(due_day, DUBLIN)


def test_gdpr_uses_irish_local_date_and_summer_time() -> None:
    # 23:30 UTC on Tue 30 Jun 2026 is 00:30 IST on Wed 1 Jul: one month is Sat 1 Aug,
    # Sun 2 Aug, Mon 3 Aug is the August bank holiday -> Tue 4 Aug. End of day in IST
    # (UTC+1) is 22:59:59 UTC.
    received = datetime(2026, 6, 30, 23, 30, tzinfo=UTC)
    assert DEADLINES.due(Regime.GDPR, received) == datetime(2026, 8, 4, 22, 59, 59, tzinfo=UTC)


def test_gdpr_does_not_need_a_chinese_calendar_for_2027() -> None:
    assert DEADLINES.due(Regime.GDPR, dublin(2027, 5, 12)) == end_of_day_utc(
        date(2027, 6, 14),
        DUBLIN,  # Sat 12 Jun -> Mon 14 Jun 2027
    )


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (date(2025, 1, 31), 1, date(2025, 2, 28)),
        (date(2028, 1, 31), 1, date(2028, 2, 29)),
        (date(2026, 3, 31), 1, date(2026, 4, 30)),
        (date(2026, 12, 15), 1, date(2027, 1, 15)),
        (date(2026, 11, 30), 3, date(2027, 2, 28)),
        (date(2026, 5, 31), 2, date(2026, 7, 31)),
    ],
)
def test_add_months(start: date, months: int, expected: date) -> None:
    assert add_months(start, months) == expected


# -- CCPA --------------------------------------------------------------------------------


def test_ccpa_is_45_calendar_days_in_los_angeles() -> None:
    # Sat 10 Jan 2026 10:00 PST: Jan 10 + 21 = Jan 31, + 24 = Tue 24 Feb. End of day PST
    # (UTC-8) is 07:59:59 UTC on the 25th.
    received = datetime(2026, 1, 10, 18, 0, tzinfo=UTC)
    assert DEADLINES.due(Regime.CCPA, received) == datetime(2026, 2, 25, 7, 59, 59, tzinfo=UTC)


def test_ccpa_receipt_date_is_the_pacific_date_and_due_follows_dst() -> None:
    # 05:00 UTC on 1 Mar 2026 is still 21:00 PST on Sat 28 Feb: + 45 days = Tue 14 Apr,
    # by then on PDT (UTC-7): 23:59:59 PDT = 06:59:59 UTC on the 15th.
    received = datetime(2026, 3, 1, 5, 0, tzinfo=UTC)
    assert DEADLINES.due(Regime.CCPA, received) == datetime(2026, 4, 15, 6, 59, 59, tzinfo=UTC)


def test_ccpa_does_not_move_off_weekends_or_holidays() -> None:
    # Tue 10 Nov 2026 + 45 = Fri 25 Dec 2026 (Christmas): calendar days, no adjustment.
    received = datetime(2026, 11, 10, 12, 0, tzinfo=LOS_ANGELES).astimezone(UTC)
    assert DEADLINES.due(Regime.CCPA, received) == end_of_day_utc(date(2026, 12, 25), LOS_ANGELES)


# -- working days used -------------------------------------------------------------------


def test_working_days_used_pipl_across_new_year() -> None:
    received = shanghai(2026, 2, 10)
    # (10 Feb, 27 Feb]: 11, 12, 13, Sat 14, then 24, 25, 26, 27 = 8.
    assert DEADLINES.working_days_used(Regime.PIPL, received, shanghai(2026, 2, 27)) == 8
    # Nothing used on the day of receipt, nor over the holiday itself.
    assert DEADLINES.working_days_used(Regime.PIPL, received, shanghai(2026, 2, 10, 23)) == 0
    assert DEADLINES.working_days_used(Regime.PIPL, received, shanghai(2026, 2, 23)) == 4
    # On the due date all 15 are used.
    due = DEADLINES.due(Regime.PIPL, received)
    assert DEADLINES.working_days_used(Regime.PIPL, received, due) == 15


def test_working_days_used_counts_shanghai_dates() -> None:
    # Received 16:00 UTC Thu 5 Mar = 00:00 Fri 6 Mar in Shanghai; until 01:00 UTC Mon 9 Mar
    # = 09:00 Mon in Shanghai: (6 Mar, 9 Mar] holds one working day (Mon 9). Counting UTC
    # dates would give (5 Mar, 9 Mar] = 2.
    received = datetime(2026, 3, 5, 16, 0, tzinfo=UTC)
    until = datetime(2026, 3, 9, 1, 0, tzinfo=UTC)
    assert DEADLINES.working_days_used(Regime.PIPL, received, until) == 1


def test_working_days_used_gdpr_skips_irish_holidays() -> None:
    # (Mon 16 Mar 2026, Fri 20 Mar]: Tue 17 is St Patrick's Day -> 18, 19, 20 = 3.
    assert DEADLINES.working_days_used(Regime.GDPR, dublin(2026, 3, 16), dublin(2026, 3, 20)) == 3


# -- property ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    day=st.dates(min_value=date(2025, 1, 1), max_value=date(2026, 11, 15)),
    moment=st.times(),
)
def test_pipl_due_property(day: date, moment: time) -> None:
    received = datetime.combine(day, moment, tzinfo=SHANGHAI).astimezone(UTC)
    due = DEADLINES.due(Regime.PIPL, received)

    assert due > received
    local_due = due.astimezone(SHANGHAI)
    assert local_due.time() == time(23, 59, 59)
    assert cn_working_day(local_due.date())
    in_window = _days(day + timedelta(days=1), local_due.date())
    assert sum(cn_working_day(d) for d in in_window) == 15


def test_empty_override_entry_does_not_unlock_estimated_holidays(tmp_path: Path) -> None:
    # `2027: {}` publishes nothing. The package's 2027 dates are estimates made before the
    # notice (no make-up days); an empty entry must not silently switch them on.
    try:
        overrides = _write_overrides(tmp_path, "CN:\n  2027: {}\n")
    except ValueError:
        return  # refusing the file is fine too
    with pytest.raises(CalendarUnavailable):
        Deadlines(overrides).due(Regime.PIPL, shanghai(2026, 12, 15))
