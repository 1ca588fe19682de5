"""One request on its own page: its dates right to the day, its systems, its partners and
what it delivered (access package or erasure certificate). HTML and Markdown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from markupsafe import Markup

from dsrflow.deadlines import RULES, Deadlines
from dsrflow.ledger import Ledger, PartnerRequest, RequestRecord, StepRecord
from dsrflow.model import DELIVERABLE_KIND, Status, StepAction
from dsrflow.report.frames import aware, iso, step_table
from dsrflow.report.pages import TEXT_COLUMNS, generated_at, html_table, to_markdown
from dsrflow.sla import business_days_left, business_days_used, deadline_state
from dsrflow.templates import render


@dataclass(frozen=True)
class RequestView:
    """What the page of one request shows, rendered by `request_view` (HTML) and
    `request_view_markdown`."""

    title: str
    facts: list[tuple[str, str]]
    systems: pd.DataFrame
    partners: pd.DataFrame
    deliverables: pd.DataFrame


VIEW_SYSTEM_COLUMNS = {
    "system": "system", "kind": "kind", "action": "action", "status": "status",
    "found": "found", "collected": "collected", "deleted": "deleted",
    "anonymized": "anonymized", "retained": "retained", "retain_reasons": "retained because",
    "remaining": "remaining after verification", "sensitive": "sensitive (policy 2.1)",
    "errors": "error",
}
VIEW_PARTNER_COLUMNS = [
    "partner", "status", "reference", "confirmed by", "confirmed at", "expected completion",
    "partner request id", "error",
]
VIEW_DELIVERABLE_COLUMNS = [
    "deliverable", "status", "location", "expires", "sha256", "outcome", "key handed over",
    "error",
]
_DELIVERABLE_NAMES = {StepAction.DELIVER: "access package",
                      StepAction.CERTIFY: "erasure certificate"}


def build_request_view(
    ledger: Ledger, deadlines: Deadlines, request_id: str, now: datetime | None = None,
    at_risk_days: int = 3,
) -> RequestView:
    """Raises `UnknownRequest` for an id the ledger does not hold."""
    now = aware(now or datetime.now(UTC))
    record = ledger.get(request_id)
    rows = ledger.steps([request_id])
    partners = ledger.partner_requests([request_id])
    table = step_table(rows, partners)
    work = table[table["kind"] != DELIVERABLE_KIND]
    systems = work[list(VIEW_SYSTEM_COLUMNS)].rename(columns=VIEW_SYSTEM_COLUMNS)
    return RequestView(
        title=f"Request {record.id}",
        facts=_facts(record, deadlines, now, at_risk_days) + _gate_facts(ledger, record),
        systems=systems.reset_index(drop=True),
        partners=_partner_rows(partners, rows),
        deliverables=_deliverable_rows(rows),
    )


def request_view(
    ledger: Ledger, deadlines: Deadlines, request_id: str, now: datetime | None = None,
    at_risk_days: int = 3,
) -> str:
    """One request's page (HTML, self-contained): its dates and deadline, the versions it
    ran under, what each system found and did, its partners and its deliverables."""
    view = build_request_view(ledger, deadlines, request_id, now, at_risk_days)
    return render(
        "request.html", title=view.title, generated_at=generated_at(), facts=view.facts,
        systems=_html_table(view.systems), partners=_html_table(view.partners),
        deliverables=_html_table(view.deliverables, {"sha256": "sha"}),
    )


def request_view_markdown(
    ledger: Ledger, deadlines: Deadlines, request_id: str, now: datetime | None = None,
    at_risk_days: int = 3,
) -> str:
    """`request_view` as Markdown (a Prefect artifact, a ticket comment)."""
    view = build_request_view(ledger, deadlines, request_id, now, at_risk_days)
    facts = pd.DataFrame(view.facts, columns=["field", "value"])
    sections = [
        f"# {view.title}\n", to_markdown(facts),
        "## Systems\n", _md_section(view.systems, "No system has been worked on yet."),
        "## Partners\n", _md_section(view.partners, "Not handed to any partner."),
        "## Deliverables\n",
        _md_section(view.deliverables, "No access package or erasure certificate yet."),
        "No identities are shown: the request is identified by ticket and request id only.\n",
    ]
    return "\n".join(sections)


def _html_table(frame: pd.DataFrame, classes: Mapping[str, str] | None = None) -> Markup | None:
    """The section's table; None when there is nothing to show (the page says so)."""
    if frame.empty:
        return None
    return html_table(frame, classes={**TEXT_COLUMNS, **(classes or {})})


def _md_section(frame: pd.DataFrame, empty: str) -> str:
    return f"{empty}\n" if frame.empty else to_markdown(frame)


def _facts(
    record: RequestRecord, deadlines: Deadlines, now: datetime, at_risk_days: int
) -> list[tuple[str, str]]:
    regime = record.regime
    zone = RULES[regime].timezone if regime is not None else None

    def when(value: datetime | None, absent: str = "—") -> str:
        return iso(value) or absent

    def due_day(value: datetime | None, absent: str = "—") -> str:
        if value is None:
            return absent
        if regime is None or zone is None:
            return when(value)
        return f"end of {deadlines.local_date(regime, value)} {zone} ({when(value)})"

    closed = record.completed_at is not None and not record.status.is_open
    used = (business_days_used(deadlines, record, record.completed_at or now)
            if record.status is not Status.REJECTED else None)
    left = (business_days_left(deadlines, record, now)
            if not closed and record.status is not Status.REJECTED else None)
    facts = [
        ("request id", record.id),
        ("ticket id", record.ticket_id or "—"),
        ("type", record.type.value if record.type else "—"),
        ("regime", regime.value if regime else "—"),
        ("status", record.status.value),
        ("channel", record.channel or "—"),
    ]
    if record.scope:
        facts.append(("scope", ", ".join(sorted(record.scope))))
    facts += [
        ("received", when(record.received_at)),
        ("verified", when(record.verified_at, "not verified")),
        ("due", due_day(record.due_at, "unknown" if record.deadline_error else "—")),
    ]
    if record.extended_due_at is not None:
        facts += [
            ("extended to", due_day(record.extended_due_at)),
            ("extension notice given", when(record.extension_notice_at)),
            ("extension reason", record.extension_reason or "—"),
        ]
    else:
        facts.append(("extended", "no"))
    facts += [
        ("completed", when(record.completed_at, "not completed")),
        ("deadline state", deadline_state(record, deadlines, now, at_risk_days)),
        ("as of", when(now)),
        ("business days used", "unknown" if used is None else str(used)),
        ("business days left", "—" if left is None else str(left)),
        ("data-map version", record.datamap_version or "—"),
        ("policy version", record.policy_version or "—"),
    ]
    if record.reason or record.deadline_error:
        facts.append(("reason", str(record.reason or record.deadline_error)))
    return facts


def _gate_facts(ledger: Ledger, record: RequestRecord) -> list[tuple[str, str]]:
    """What the policy's gates decided, each with its reason (a check that found nothing
    says so too: the page shows that it ran)."""
    decided = ledger.gate_decisions([record.id]).get(record.id, {})
    facts = [(f"gate: {gate.value}", f"{d.decision}: {d.reason}")
             for gate, d in sorted(decided.items())]
    if record.guardian_relation is not None:
        verified = iso(record.guardian_verified_at) or "not verified"
        facts.append(("guardian", f"{record.guardian_relation}, verified: {verified}"))
    return facts


def _partner_rows(
    partners: Sequence[PartnerRequest], steps: Sequence[StepRecord]
) -> pd.DataFrame:
    # The confirmation time lives with the step a person confirmed, not with the partner row.
    confirmed_at = {
        s.system: str(s.details["confirmed_at"])
        for s in steps if s.kind == "partner" and s.details.get("confirmed_at")
    }
    rows = [
        [p.system, p.status.value, p.reference, p.confirmed_by, confirmed_at.get(p.system),
         iso(p.expected_completion_at), p.subject_request_id, p.error]
        for p in partners
    ]
    return pd.DataFrame(rows, columns=VIEW_PARTNER_COLUMNS)


def _deliverable_rows(steps: Sequence[StepRecord]) -> pd.DataFrame:
    rows = []
    for step in steps:
        if step.kind != DELIVERABLE_KIND:
            continue
        details = step.details
        package = step.action == StepAction.DELIVER
        # Only these fields: `key_handed_to` is free text a person typed, and stays out.
        handed = (details.get("key_handed_over_at") or "not yet") if package else None
        rows.append([
            _DELIVERABLE_NAMES.get(step.action, step.system),
            step.status.value,
            details.get("location") if package else details.get("path"),
            details.get("expires_at"),
            details.get("sha256"),
            details.get("outcome"),
            handed,
            step.error,
        ])
    return pd.DataFrame(rows, columns=VIEW_DELIVERABLE_COLUMNS)
