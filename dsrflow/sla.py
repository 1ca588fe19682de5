"""The deadline state of a request: one word for where it stands against its due date.

Always against `effective_due_at` (the extended due date, if there is one), so an extended
request is judged by the date the subject was told, and completed on time means on time
by that date.

States, first match wins:

- `not_applicable`: a rejected ticket; it never became a request.
- `completed_on_time` / `completed_late`: closed, judged by its completion time.
- `awaiting_verification`: waiting for identification where the clock waits for it too
  (UK GDPR): no due date yet, and none missed.
- `unknown`: no due date otherwise (the calendar for the year is not published).
- `overdue`: past the due moment.
- `at_risk`: `at_risk_days` working days or fewer left.
- `extended`: open, with an extended due date, not at risk.
- `awaiting_verification`: waiting for identification while the clock runs (PIPL, GDPR,
  CCPA); at risk and overdue come first, because the clock does not care.
- `on_time`.
"""

from __future__ import annotations

from datetime import datetime

from dsrflow.deadlines import CalendarUnavailable, Deadlines
from dsrflow.ledger import RequestRecord
from dsrflow.model import Status


def deadline_state(
    record: RequestRecord, deadlines: Deadlines, now: datetime, at_risk_days: int
) -> str:
    if record.status is Status.REJECTED:
        return "not_applicable"
    due = record.effective_due_at
    if due is not None and record.completed_at is not None and not record.status.is_open:
        return "completed_on_time" if record.completed_at <= due else "completed_late"
    if due is None:
        if (
            record.status is Status.AWAITING_VERIFICATION
            and record.regime is not None
            and deadlines.clock_waits_for_verification(record.regime)
        ):
            return "awaiting_verification"
        return "unknown"
    if now > due:
        return "overdue"
    left = business_days_left(deadlines, record, now)
    if left is None:
        return "unknown"
    if left <= at_risk_days:
        return "at_risk"
    if record.extended_due_at is not None:
        return "extended"
    if record.status is Status.AWAITING_VERIFICATION:
        return "awaiting_verification"
    return "on_time"


def business_days_used(deadlines: Deadlines, record: RequestRecord, until: datetime) -> int | None:
    """Working days of the response period used by `until`, counted from when its clock
    started (receipt; verification where the clock waits for it, as for UK GDPR): 0 while
    it has not started, None without a regime or a calendar for the years in between."""
    if record.regime is None:
        return None
    start = deadlines.clock_start(record.regime, record.received_at, record.verified_at)
    if start is None:
        return 0
    try:
        return deadlines.working_days_used(record.regime, start, until)
    except CalendarUnavailable:
        return None


def business_days_left(deadlines: Deadlines, record: RequestRecord, at: datetime) -> int | None:
    """Working days from `at` to the due date; negative once overdue (None without a due
    date, or without a calendar for the years in between)."""
    due = record.effective_due_at
    if record.regime is None or due is None:
        return None
    try:
        if at <= due:
            return deadlines.working_days_used(record.regime, at, due)
        return -deadlines.working_days_used(record.regime, due, at)
    except CalendarUnavailable:
        return None
