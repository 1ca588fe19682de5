"""Deadlines per regime, computed from published calendars, never typed in.

- PIPL (the app's own promise, privacy policy 9.2): the end of the 15th working day after
  the day of receipt, in Asia/Shanghai, on the State Council calendar (public holidays off,
  make-up weekend working days on). The day of receipt is not counted (Civil Code art. 201).
- GDPR: one month: the same date next month, the month's last day where there is no such
  date, moved to the next working day when it is not one.
- CCPA: 45 calendar days from receipt, running while the identity is verified.
- UK GDPR: as GDPR (on the GB calendar, in Europe/London), but the clock may start when
  identification arrives, so it starts at verification.

Extensions (`Deadlines.extension_cap`): GDPR and UK GDPR two further months (the GDPR rule
applied to three months), CCPA 45 more days (90 from receipt); PIPL none, because the
privacy policy (9.2) promises 15 working days without one.

A Chinese year whose State Council notice is not in the `holidays` package (nor in an
override file) raises `CalendarUnavailable`: guessing would risk a missed legal deadline.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from pathlib import Path
from zoneinfo import ZoneInfo

import holidays
import yaml
from holidays.countries.china import ChinaStaticHolidays
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dsrflow.model import Regime

PIPL_WORKING_DAYS = 15
CCPA_DAYS = 45
GDPR_MONTHS = 1
# GDPR art. 12(3): "extended by two further months"; counted like the first period, from
# the clock's start, so month ends and non-working days are treated the same way.
GDPR_EXTENDED_MONTHS = GDPR_MONTHS + 2
# CCPA (Cal. Civ. Code 1798.130(a)(2)(A)): "may be extended once by an additional 45 days".
CCPA_EXTENDED_DAYS = 2 * CCPA_DAYS


class CalendarUnavailable(LookupError):
    """The working-day calendar for a year has not been published (or is not known here)."""


class CalendarOverridesError(ValueError):
    """The calendar overrides file cannot be used: the message names the file, the place
    in it and what is wrong, never the values written there."""


class YearOverride(BaseModel):
    """A year's official notice. Its holidays are required: an empty entry would silently
    switch on the package's estimated holidays, which is the guess this file exists to
    avoid."""

    model_config = ConfigDict(extra="forbid")
    holidays: list[date] = Field(min_length=1)
    workdays: list[date] = []


class CalendarOverrides(BaseModel):
    """`{CN: {2027: {holidays: [...], workdays: [...]}}}`: a notice published after the
    installed `holidays` release, typed in from the official text."""

    model_config = ConfigDict(extra="forbid")
    countries: dict[str, dict[int, YearOverride]] = {}

    @classmethod
    def load(cls, path: Path | None) -> CalendarOverrides:
        if path is None:
            return cls()
        try:
            return cls(countries=yaml.safe_load(path.read_text()) or {})
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise CalendarOverridesError(
                f"{path}: invalid calendar overrides: not valid YAML{where}"
            ) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"][1:])  # under `countries`
            raise CalendarOverridesError(
                f"{path}: invalid calendar overrides: {where}: {first['msg']}"
            ) from None
        except ValueError:  # YAML's own reading of a date (`2027-13-01`)
            raise CalendarOverridesError(
                f"{path}: invalid calendar overrides: a date cannot be read"
            ) from None


@dataclass
class WorkingCalendar:
    country: str
    published_years: frozenset[int] | None = None  # None: every year the package computes
    overrides: Mapping[int, YearOverride] = field(default_factory=dict)

    @cached_property
    def _holidays(self) -> holidays.HolidayBase:
        return holidays.country_holidays(self.country)

    def _check_year(self, year: int) -> None:
        if year in self.overrides:
            return
        if self.published_years is not None and year not in self.published_years:
            raise CalendarUnavailable(
                f"the {self.country} working-day calendar for {year} is not published in the "
                f"installed `holidays` package; add it to calendar_overrides once the official "
                f"notice is out"
            )

    def is_working_day(self, day: date) -> bool:
        self._check_year(day.year)
        override = self.overrides.get(day.year)
        if override is not None:
            if day in override.workdays:
                return True
            if day in override.holidays:
                return False
            return day.weekday() < 5
        return bool(self._holidays.is_working_day(day))

    def add_working_days(self, start: date, count: int) -> date:
        """The `count`-th working day after `start` (`start` itself is not counted)."""
        day = start
        remaining = count
        while remaining > 0:
            day += timedelta(days=1)
            if self.is_working_day(day):
                remaining -= 1
        return day

    def next_working_day(self, day: date) -> date:
        while not self.is_working_day(day):
            day += timedelta(days=1)
        return day

    def working_days_between(self, start: date, end: date) -> int:
        """Working days in (start, end]."""
        count = 0
        day = start
        while day < end:
            day += timedelta(days=1)
            if self.is_working_day(day):
                count += 1
        return count


@dataclass(frozen=True)
class RegimeRule:
    timezone: str
    country: str
    # The period starts once identification arrives, not at receipt. Only where the law
    # says so: CCPA runs 45 days "even while verifying", and PIPL's 15 working days are
    # counted from receipt, the reading of policy 9.2 that cannot miss a deadline.
    clock_waits_for_verification: bool = False


RULES: dict[Regime, RegimeRule] = {
    Regime.PIPL: RegimeRule("Asia/Shanghai", "CN"),
    Regime.GDPR: RegimeRule("Europe/Dublin", "IE"),
    Regime.CCPA: RegimeRule("America/Los_Angeles", "US"),
    # GB without a subdivision: the UK-wide bank holidays only. A nation's extra holiday
    # (England's Easter Monday, Scotland's 2 January) could only move a due date later,
    # and the ICO is one regulator for all four nations.
    Regime.UK_GDPR: RegimeRule("Europe/London", "GB", clock_waits_for_verification=True),
}


class Deadlines:
    """Computes due dates and working days used. Times in and out are timezone-aware UTC."""

    def __init__(self, overrides: CalendarOverrides | None = None) -> None:
        self._overrides = overrides or CalendarOverrides()
        self._calendars: dict[Regime, WorkingCalendar] = {}

    @property
    def overrides(self) -> CalendarOverrides:
        return self._overrides

    def calendar(self, regime: Regime) -> WorkingCalendar:
        if regime not in self._calendars:
            rule = RULES[regime]
            published = (
                frozenset(ChinaStaticHolidays.special_public_holidays)
                if rule.country == "CN"
                else None
            )
            self._calendars[regime] = WorkingCalendar(
                rule.country, published, self._overrides.countries.get(rule.country, {})
            )
        return self._calendars[regime]

    def local_date(self, regime: Regime, moment: datetime) -> date:
        return _aware(moment).astimezone(ZoneInfo(RULES[regime].timezone)).date()

    def clock_waits_for_verification(self, regime: Regime) -> bool:
        return RULES[regime].clock_waits_for_verification

    def clock_start(
        self, regime: Regime, received_at: datetime, verified_at: datetime | None
    ) -> datetime | None:
        """When the response period starts: receipt, or, where the clock waits for
        identification, the later of receipt and verification (None until verified). A
        ticket may carry a verification older than itself (a logged-in app session); the
        period still cannot start before the request exists."""
        if not self.clock_waits_for_verification(regime):
            return received_at
        if verified_at is None:
            return None
        return max(_aware(received_at), _aware(verified_at))

    def due(self, regime: Regime, received_at: datetime) -> datetime:
        """The end of the first period, counted from `received_at` (the clock's start)."""
        received = self.local_date(regime, received_at)
        match regime:
            case Regime.PIPL:
                last = self.calendar(regime).add_working_days(received, PIPL_WORKING_DAYS)
            case Regime.GDPR | Regime.UK_GDPR:
                last = self.calendar(regime).next_working_day(add_months(received, GDPR_MONTHS))
            case Regime.CCPA:
                last = received + timedelta(days=CCPA_DAYS)
        return end_of_day(last, RULES[regime].timezone)

    def extension_cap(self, regime: Regime, received_at: datetime) -> datetime | None:
        """The latest due date an extension may set, counted from `received_at` (the
        clock's start); None where the regime allows no extension."""
        received = self.local_date(regime, received_at)
        match regime:
            case Regime.PIPL:
                return None
            case Regime.GDPR | Regime.UK_GDPR:
                last = self.calendar(regime).next_working_day(
                    add_months(received, GDPR_EXTENDED_MONTHS)
                )
            case Regime.CCPA:
                last = received + timedelta(days=CCPA_EXTENDED_DAYS)
        return end_of_day(last, RULES[regime].timezone)

    def end_of_local_day(self, regime: Regime, day: date) -> datetime:
        """23:59:59 of `day` in the regime's time zone, in UTC."""
        return end_of_day(day, RULES[regime].timezone)

    def working_days_used(self, regime: Regime, received_at: datetime, until: datetime) -> int:
        start = self.local_date(regime, received_at)
        end = self.local_date(regime, until)
        return self.calendar(regime).working_days_between(start, end)


def add_months(day: date, months: int) -> date:
    """Same day-of-month `months` later; the month's last day if there is no such date."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def end_of_day(day: date, tz: str) -> datetime:
    local = datetime.combine(day, time(23, 59, 59), tzinfo=ZoneInfo(tz))
    return local.astimezone(UTC)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
