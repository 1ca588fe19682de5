"""Prefect tasks around the request: the gate, the plan, closing, and what the Prefect UI
shows of it (artifacts and events, with ids and counts, never identities)."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from dsrflow.errors import raises_safely
from dsrflow.ledger import RequestRecord, StepRecord
from dsrflow.model import Status
from pipeline import closing, deliverables, partners, screening, steps
from pipeline.closing import Closed
from pipeline.runtime import get_runtime

_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="open-requests", **_TASK)  # type: ignore[call-overload]
@raises_safely
def open_requests(request_ids: list[str], owner: str) -> steps.Gate:
    gate = steps.open_requests(get_runtime(), request_ids, owner=owner)
    logger = get_run_logger()
    for rid, why in gate.held.items():
        logger.info("request %s held: %s", rid, why)
    return gate


@task(name="resolve-identities", **_TASK)  # type: ignore[call-overload]
@raises_safely
def resolve_identities(request_ids: list[str]) -> dict[str, int]:
    learnt = steps.resolve_identities(get_runtime(), request_ids)
    logger = get_run_logger()
    for rid, count in learnt.items():
        if count:
            logger.info("request %s: %d identities learnt from its own rows", rid, count)
    return learnt


@task(name="screen-requests", **_TASK)  # type: ignore[call-overload]
@raises_safely
def screen_requests(request_ids: list[str]) -> screening.Screened:
    """The policy's gates: a repeat is allowed, flagged or refused (privacy policy 6.6.2); a
    child's request waits for a verified guardian (7.x)."""
    screened = screening.screen(get_runtime(), request_ids)
    logger = get_run_logger()
    for rid, status in screened.stopped.items():
        logger.info("request %s stopped at the gate: %s", rid, status.value)
    return screened


@task(name="plan-systems", **_TASK)  # type: ignore[call-overload]
@raises_safely
def plan_systems(request_ids: list[str]) -> steps.Plan:
    return steps.plan_systems(get_runtime(), request_ids)


@task(name="deliver-results", **_TASK)  # type: ignore[call-overload]
@raises_safely
def deliver_results(request_ids: list[str]) -> dict[str, str]:
    """Access packages and erasure certificates for the requests that are ready."""
    rt = get_runtime()
    made = deliverables.produce(rt, request_ids)
    logger = get_run_logger()
    for record in rt.ledger.get_many(list(made)):
        logger.info("request %s: %s", record.id, made[record.id])
        event = DELIVERED_EVENTS.get(made[record.id])
        if event is not None:  # made; a failure is announced when the request closes
            announce(record, event)
    return made


DELIVERED_EVENTS = {
    deliverables.PACKAGE: "dsr.request.package_delivered",
    deliverables.CERTIFICATE: "dsr.request.certified",
}


@task(name="close-requests", **_TASK)  # type: ignore[call-overload]
@raises_safely
def close_requests(request_ids: list[str]) -> Closed:
    return closing.close_requests(get_runtime(), request_ids)


@task(name="publish-results", **_TASK)  # type: ignore[call-overload]
@raises_safely
def publish_results(request_ids: list[str]) -> None:
    """A table for the batch, a summary per request, an event per closed request."""
    rt = get_runtime()
    records = rt.ledger.get_many(request_ids)
    by_request: dict[str, list[StepRecord]] = {}
    for step in rt.ledger.steps(request_ids):
        by_request.setdefault(step.request_id, []).append(step)
    create_table_artifact(
        key="dsr-batch",
        table=[_row(r, by_request.get(r.id, [])) for r in records],
        description=f"{len(records)} data-subject requests",
    )
    for record in records:
        create_markdown_artifact(
            key=f"dsr-{record.id}",
            markdown=_summary(record, by_request.get(record.id, [])),
            description=f"Request {record.ticket_id}",
        )
        event = CLOSING_EVENTS.get(record.status)
        if event is not None:  # still open (e.g. awaiting a partner): nothing to announce
            announce(record, event)


def announce(record: RequestRecord, event: str) -> None:
    """A `dsr.request.*` event about one request: ids, type, regime, status, due date."""
    emit_event(
        event=event,
        resource={
            "prefect.resource.id": f"dsrflow.request.{record.id}",
            "prefect.resource.name": record.ticket_id or record.id,
        },
        payload={
            "type": record.type.value if record.type else None,
            "regime": record.regime.value if record.regime else None,
            "status": record.status.value,
            "due_at": record.effective_due_at.isoformat() if record.effective_due_at else None,
        },
    )


CLOSING_EVENTS = {
    Status.COMPLETED: "dsr.request.completed",
    Status.PARTIALLY_COMPLETED: "dsr.request.failed",
    Status.FAILED: "dsr.request.failed",
    Status.REFUSED: "dsr.request.refused",
}


def _row(record: RequestRecord, steps_: list[StepRecord]) -> dict[str, object]:
    return {
        "request": record.id,
        "ticket": record.ticket_id,
        "type": record.type.value if record.type else "",
        "regime": record.regime.value if record.regime else "",
        "status": record.status.value,
        "due": _local_due(record),
        "systems": ", ".join(f"{s.system}:{s.action}={s.status}" for s in steps_),
    }


def _local_due(record: RequestRecord) -> str:
    """The due date as the regime counts it: in its own time zone (the end of a CCPA day in
    Los Angeles is already the next day in UTC)."""
    due = record.effective_due_at
    if due is None or record.regime is None:
        return "unknown"
    return get_runtime().deadlines.local_date(record.regime, due).isoformat()


def _due_line(record: RequestRecord) -> str:
    # The extension's reason stays in the ledger: it is free text typed by a person, and
    # nothing typed by a person goes to Prefect unread.
    if record.extended_due_at is not None and record.due_at is not None:
        return (f"{record.extended_due_at.isoformat()} (extended from "
                f"{record.due_at.isoformat()})")
    if record.due_at is not None:
        return record.due_at.isoformat()
    return record.deadline_error or "clock not started (awaiting verification)"


def _summary(record: RequestRecord, steps_: list[StepRecord]) -> str:
    lines = [
        f"# {record.type.value if record.type else 'request'} {record.ticket_id}",
        "",
        f"- request id: `{record.id}`",
        f"- regime: {record.regime.value if record.regime else '-'}",
        f"- status: **{record.status.value}**" + (f" ({record.reason})" if record.reason else ""),
        f"- received: {record.received_at.isoformat()}",
        f"- due: {_due_line(record)}",
        "",
        "| system | action | status | found | deleted | anonymized | retained | remaining |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in steps_:
        cells = [s.system, s.action, s.status, s.found, s.deleted,
                 s.anonymized, s.retained, s.remaining]
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


@task(name="check-partners", **_TASK)  # type: ignore[call-overload]
@raises_safely
def check_partners() -> dict[str, str]:
    happened = partners.check(get_runtime())
    logger = get_run_logger()
    for rid, what in happened.items():
        logger.info("request %s: %s", rid, what)
    return happened


def partner_instructions(request_id: str, partner: str) -> str:
    """What the person confirming a manual partner is asked (ids only, no identities)."""
    rt = get_runtime()
    record = rt.ledger.get(request_id)
    connector = rt.partner(partner)
    kind = record.type.value if record.type else "request"
    how = connector.system.contact or "the partner"
    return (
        f"### Confirm {partner} for ticket {record.ticket_id}\n\n"
        f"Ask {how} to carry out the **{kind}** for request `{request_id}` (look the "
        "subject up by this id in dsrflow; no identity is shown here), then record who "
        "confirmed it and the partner's reference."
    )


@task(name="confirm-partner", **_TASK)  # type: ignore[call-overload]
@raises_safely
def confirm_partner(
    request_id: str, partner: str, by: str, reference: str, at: datetime
) -> str:
    partners.confirm(get_runtime(), request_id, partner, by=by, reference=reference, at=at)
    return get_runtime().ledger.get(request_id).status.value
