"""The hourly deadline report.

    compute  a due date for each request whose calendar was missing, if one now has its
             year (the calendar overrides file is read again first)
    assess   the deadline state of every request in the ledger (on time, at risk,
             overdue, unknown, awaiting verification, completed on time or late, ...)
    alert    a `dsr.request.at_risk`, `dsr.request.overdue` or
             `dsr.request.deadline_unknown` event for each request that entered that state
             since the last alert (remembered in the ledger's audit chain, so an hourly
             schedule does not repeat itself; see tasks/deadlines.py)
    publish  a markdown artifact `deadline-report`: counts per state and the requests at
             risk, overdue or without a known deadline, by ticket and request id

A Prefect automation (deployments/automations.yaml) turns the events into notifications.
"""

from __future__ import annotations

from prefect import flow

from dsrflow.errors import raises_safely
from tasks.deadlines import (
    alert_deadlines,
    assess_deadlines,
    compute_unknown_deadlines,
    publish_deadline_report,
)


@flow(name="deadline-report", persist_result=False)
@raises_safely
def deadline_report(remind_every_hours: float | None = None) -> dict[str, int]:
    """Counts per deadline state; alerts for requests newly at risk, overdue or without a
    known deadline (and again every `remind_every_hours`, if set, while they stay so)."""
    computed = compute_unknown_deadlines()
    report = assess_deadlines()
    alerted = alert_deadlines(report, remind_every_hours)
    publish_deadline_report(report, alerted, computed)
    return report.counts
