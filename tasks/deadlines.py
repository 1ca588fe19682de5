"""The deadline report's tasks: due dates for requests whose calendar has become
available, the SLA state of every request, the alerts Prefect automations turn into
notifications, and a summary artifact. Ids, counts and dates only: the ledger's records
carry no identities, and nothing here reads them.

A request whose deadline could not be computed (no working-day calendar for its year) is
`unknown`, and not knowing a legal deadline is itself a risk: it alerts like at-risk and
overdue ones. Each report first reads the calendar overrides file again and gives every
such request its due date if a calendar now has the year (`compute_unknown_deadlines`).

Alerting once, not every hour. A request at risk stays at risk for days; an hourly event
for each would bury the one that matters. So an event is emitted when a request *enters*
an alerting state — `dsr.request.at_risk`, later `dsr.request.overdue`, or
`dsr.request.deadline_unknown` — and the alert is remembered in the ledger's audit chain
(`deadline.alerted`, with the state and due date, none for an unknown one).
The next run sees it there and stays quiet; a new state, or a new due date, alerts again.
`remind_every_hours` (a flow parameter) re-sends an unchanged alert once the last one is
that old. The event is handed to Prefect before the audit row is written, so a crash in
between means one repeated alert at the next run, never a lost one that the ledger says
was sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from sqlalchemy import select

from dsrflow.deadlines import Deadlines
from dsrflow.errors import raises_safely, safe_error
from dsrflow.ledger import Ledger, RequestRecord
from dsrflow.ledger.schema import audit_events
from dsrflow.sla import business_days_left, deadline_state
from pipeline.runtime import get_runtime

_TASK = {"cache_policy": NO_CACHE, "persist_result": False}

EVENTS = {
    "at_risk": "dsr.request.at_risk",
    "overdue": "dsr.request.overdue",
    "unknown": "dsr.request.deadline_unknown",
}
# Most urgent first: the artifact's table and the alerts go in this order.
_ALERT_ORDER = ["overdue", "at_risk", "unknown"]
AUDIT_EVENT = "deadline.alerted"
# The order the artifact lists states in (others, if any, follow alphabetically).
STATE_ORDER = [
    "overdue", "at_risk", "extended", "on_time", "awaiting_verification", "unknown",
    "completed_late", "completed_on_time", "not_applicable",
]
_TABLE_LIMIT = 200  # rows of alerting requests shown in the artifact


def now() -> datetime:
    """The report's clock (tests replace it)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Alerting:
    """A request at risk, overdue or without a known deadline, as an event and the
    artifact show it."""

    request_id: str
    ticket_id: str | None
    state: str
    type: str | None
    regime: str | None
    status: str
    due_at: datetime | None  # None: unknown
    business_days_left: int | None
    reason: str | None = None  # why the deadline is unknown (which calendar is missing)

    @property
    def due(self) -> str | None:
        return self.due_at.isoformat() if self.due_at is not None else None

    def payload(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "type": self.type,
            "regime": self.regime,
            "status": self.status,
            "state": self.state,
            "due_at": self.due,
            "business_days_left": self.business_days_left,
        }
        if self.reason is not None:
            payload["reason"] = self.reason
        return payload


@dataclass(frozen=True)
class DeadlineReport:
    at: datetime
    at_risk_days: int
    counts: dict[str, int]
    alerting: list[Alerting] = field(default_factory=list)


def assess(
    records: Iterable[RequestRecord], deadlines: Deadlines, at: datetime, at_risk_days: int
) -> DeadlineReport:
    counts: Counter[str] = Counter()
    alerting = []
    for record in records:
        state = deadline_state(record, deadlines, at, at_risk_days)
        counts[state] += 1
        if state not in EVENTS:
            continue
        alerting.append(
            Alerting(
                request_id=record.id,
                ticket_id=record.ticket_id,
                state=state,
                type=record.type.value if record.type else None,
                regime=record.regime.value if record.regime else None,
                status=record.status.value,
                # The due date that binds now: an extension moves the alert to its date.
                due_at=record.effective_due_at,
                business_days_left=business_days_left(deadlines, record, at),
                reason=record.deadline_error if state == "unknown" else None,
            )
        )
    alerting.sort(key=lambda a: (
        _ALERT_ORDER.index(a.state), a.due_at or datetime.max.replace(tzinfo=UTC),
        a.request_id))
    return DeadlineReport(at=at, at_risk_days=at_risk_days, counts=dict(counts),
                          alerting=alerting)


def last_alerts(
    ledger: Ledger, request_ids: Sequence[str]
) -> dict[str, tuple[str, str | None, datetime]]:
    """The last alert recorded per request: (state, due date or None, when)."""
    found: dict[str, tuple[str, str | None, datetime]] = {}
    ids = list(request_ids)
    with ledger.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            rows = conn.execute(
                select(audit_events.c.request_id, audit_events.c.detail, audit_events.c.at)
                .where(audit_events.c.event == AUDIT_EVENT)
                .where(audit_events.c.request_id.in_(ids[start:start + 500]))
                .order_by(audit_events.c.id)
            )
            for request_id, detail, at in rows:
                detail = detail or {}
                # The report's own clock when it alerted (the row's `at` is the ledger's).
                stamp = detail.get("report_at")
                when = datetime.fromisoformat(stamp) if stamp else at
                when = when if when.tzinfo else when.replace(tzinfo=UTC)
                due = detail.get("due_at")
                found[request_id] = (str(detail.get("state")),
                                     None if due is None else str(due), when)
    return found


def due_for_alert(
    report: DeadlineReport,
    previous: dict[str, tuple[str, str | None, datetime]],
    remind_every_hours: float | None = None,
) -> list[Alerting]:
    """The alerting requests whose state (or due date) changed since the last alert, or
    whose last alert is older than the reminder interval."""
    chosen = []
    for alert in report.alerting:
        last = previous.get(alert.request_id)
        changed = last is None or (last[0], last[1]) != (alert.state, alert.due)
        remind = (
            last is not None and remind_every_hours is not None
            and report.at - last[2] >= timedelta(hours=remind_every_hours)
        )
        if changed or remind:
            chosen.append(alert)
    return chosen


def emit_alert(alert: Alerting) -> None:
    emit_event(
        event=EVENTS[alert.state],
        resource={
            "prefect.resource.id": f"dsrflow.request.{alert.request_id}",
            "prefect.resource.name": alert.ticket_id or alert.request_id,
        },
        payload=alert.payload(),
    )


@task(name="compute-unknown-deadlines", **_TASK)  # type: ignore[call-overload]
@raises_safely
def compute_unknown_deadlines() -> list[str]:
    """Give their due dates to the requests whose calendar was missing, if one has the year
    now: the overrides file is read again first (a notice typed in since this process
    started counts now). Returns the request ids that got one."""
    rt = get_runtime()
    logger = get_run_logger()
    try:
        rt.reload_calendars()
    except (OSError, ValueError) as exc:
        # The report must still run (overdue requests must still alert): with the
        # calendars the process already has, and the file's problem in the log.
        logger.error("calendar overrides not reloaded, the current ones stay: %s",
                     safe_error(exc))
    computed = rt.ledger.recompute_unknown_deadlines()
    if computed:
        logger.info("%d requests got their due date from a calendar now available",
                    len(computed))
    return list(computed)


@task(name="assess-deadlines", **_TASK)  # type: ignore[call-overload]
@raises_safely
def assess_deadlines() -> DeadlineReport:
    rt = get_runtime()
    return assess(rt.ledger.all(), rt.deadlines, now(), rt.settings.at_risk_days)


@task(name="alert-deadlines", **_TASK)  # type: ignore[call-overload]
@raises_safely
def alert_deadlines(report: DeadlineReport, remind_every_hours: float | None = None) -> list[str]:
    """Emit `dsr.request.at_risk` / `.overdue` / `.deadline_unknown` for requests not yet
    alerted in their current state; returns the request ids alerted."""
    ledger = get_runtime().ledger
    previous = last_alerts(ledger, [a.request_id for a in report.alerting])
    alerted = []
    for alert in due_for_alert(report, previous, remind_every_hours):
        emit_alert(alert)
        ledger.audit(AUDIT_EVENT, alert.request_id,
                     {"state": alert.state, "due_at": alert.due,
                      "business_days_left": alert.business_days_left,
                      "report_at": report.at.isoformat()})
        alerted.append(alert.request_id)
    get_run_logger().info(
        "%d requests at risk, overdue or without a known deadline; %d alerted now, "
        "%d already alerted",
        len(report.alerting), len(alerted), len(report.alerting) - len(alerted),
    )
    return alerted


def summary(
    report: DeadlineReport, alerted: Sequence[str], computed: Sequence[str] = ()
) -> str:
    states = sorted(report.counts, key=lambda s: (
        STATE_ORDER.index(s) if s in STATE_ORDER else len(STATE_ORDER), s))
    lines = [
        f"# Deadlines at {report.at.astimezone(UTC).isoformat(timespec='minutes')}",
        "",
        f"{sum(report.counts.values())} requests; at risk means {report.at_risk_days} "
        "working days or fewer left.",
        "",
        "| state | requests |",
        "|---|---|",
        *(f"| {state} | {report.counts[state]} |" for state in states),
    ]
    if computed:
        lines += ["", f"{len(computed)} requests got their due date this run: a calendar "
                      "for their year is now available."]
    if report.alerting:
        now_alerted = set(alerted)
        lines += [
            "",
            "## At risk, overdue and unknown",
            "",
            "| ticket | request | type | regime | status | state | due | working days left "
            "| alerted this run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for a in report.alerting[:_TABLE_LIMIT]:
            left = "" if a.business_days_left is None else str(a.business_days_left)
            due = a.due_at.astimezone(UTC).isoformat() if a.due_at is not None else "unknown"
            lines.append(
                f"| {a.ticket_id or ''} | `{a.request_id}` | {a.type or ''} | {a.regime or ''} "
                f"| {a.status} | **{a.state}** | {due} "
                f"| {left} | {'yes' if a.request_id in now_alerted else 'no'} |"
            )
        if len(report.alerting) > _TABLE_LIMIT:
            lines.append(f"\n… and {len(report.alerting) - _TABLE_LIMIT} more "
                         "(`dsrflow status` lists them all).")
        # Why a deadline is unknown: the calendar that is missing (one line per reason).
        reasons = sorted({a.reason for a in report.alerting if a.reason})
        if reasons:
            lines += ["", "Unknown deadlines, because:", "", *(f"- {r}" for r in reasons)]
    return "\n".join(lines) + "\n"


@task(name="publish-deadline-report", **_TASK)  # type: ignore[call-overload]
@raises_safely
def publish_deadline_report(
    report: DeadlineReport, alerted: list[str], computed: list[str] | None = None
) -> None:
    create_markdown_artifact(
        key="deadline-report",
        markdown=summary(report, alerted, computed or []),
        description="Deadline state of every request",
    )
