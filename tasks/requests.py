"""Prefect tasks around the request: the gate, the plan, closing, and what the Prefect UI
shows of it (artifacts and events, with ids and counts, never identities)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
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
    _log_grouped("held", gate.held)
    return gate


@task(name="resolve-identities", **_TASK)  # type: ignore[call-overload]
@raises_safely
def resolve_identities(request_ids: list[str]) -> dict[str, int]:
    learnt = steps.resolve_identities(get_runtime(), request_ids)
    if grown := [count for count in learnt.values() if count]:
        get_run_logger().info("%d of %d requests learnt %d identities from their own rows",
                              len(grown), len(learnt), sum(grown))
    return learnt


@task(name="screen-requests", **_TASK)  # type: ignore[call-overload]
@raises_safely
def screen_requests(request_ids: list[str]) -> screening.Screened:
    """The policy's gates: a repeat is allowed, flagged or refused (privacy policy 6.6.2); a
    child's request waits for a verified guardian (7.x)."""
    screened = screening.screen(get_runtime(), request_ids)
    _log_grouped("stopped at the gate", {rid: s.value for rid, s in screened.stopped.items()})
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
    _log_grouped("delivered", made, routine=frozenset(DELIVERED_EVENTS))
    for record in rt.ledger.get_many(list(made)):
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
    """One table artifact for the batch, a row per request with its steps' figures, and an
    event per closed request. One artifact, not one per request: a batch of thousands
    cost a round trip each and buried the batch in the UI's artifact list; a request's
    own page is `dsrflow report --request ID`."""
    rt = get_runtime()
    records = rt.ledger.get_many(request_ids)
    by_request: dict[str, list[StepRecord]] = defaultdict(list)
    for step in rt.ledger.steps(request_ids, details=False):
        by_request[step.request_id].append(step)
    create_table_artifact(
        key="dsr-batch",
        table=[_row(r, by_request[r.id]) for r in records],
        description=f"{len(records)} data-subject requests",
    )
    for record in records:
        event = CLOSING_EVENTS.get(record.status)
        if event is not None:  # still open (e.g. awaiting a partner): nothing to announce
            announce(record, event)


LISTED_IDS = 50  # of one outcome in one log line; the rest are counted


def _log_grouped(
    what: str, outcomes: Mapping[str, str], routine: frozenset[str] = frozenset()
) -> None:
    """One log line per outcome and batch, not per request: its count and, unless it is
    routine, the first request ids (a person looks those up with `dsrflow report
    --request`). Outcomes are the pipeline's own texts and ids, never identities."""
    by_outcome: dict[str, list[str]] = defaultdict(list)
    for rid, outcome in outcomes.items():
        by_outcome[outcome].append(rid)
    logger = get_run_logger()
    for outcome, ids in sorted(by_outcome.items()):
        if outcome in routine:
            logger.info("%s: %s for %d requests", what, outcome, len(ids))
            continue
        more = len(ids) - LISTED_IDS
        logger.info("%s: %s for %d requests: %s%s", what, outcome, len(ids),
                    ", ".join(sorted(ids)[:LISTED_IDS]), f" and {more} more" if more > 0 else "")


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
        # Not the reason: a refusal's is typed by a person, and nothing typed goes to Prefect.
        "status": record.status.value,
        "due": _local_due(record),
        "extended": "yes" if record.extended_due_at is not None else "",
        "systems": "; ".join(_step_cell(s) for s in steps_),
    }


def _step_cell(step: StepRecord) -> str:
    """`system:action=status` and its counts that are not zero."""
    counts = [f"{label} {n}" for label, n in (
        ("found", step.found), ("deleted", step.deleted), ("anonymized", step.anonymized),
        ("retained", step.retained), ("remaining", step.remaining)) if n]
    cell = f"{step.system}:{step.action}={step.status}"
    return f"{cell} ({', '.join(counts)})" if counts else cell


def _local_due(record: RequestRecord) -> str:
    """The due date as the regime counts it: in its own time zone (the end of a CCPA day in
    Los Angeles is already the next day in UTC)."""
    due = record.effective_due_at
    if due is None or record.regime is None:
        return "unknown"
    return get_runtime().deadlines.local_date(record.regime, due).isoformat()


@task(name="check-partners", **_TASK)  # type: ignore[call-overload]
@raises_safely
def check_partners() -> dict[str, str]:
    happened = partners.check(get_runtime())
    _log_grouped("partners checked", happened)
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
