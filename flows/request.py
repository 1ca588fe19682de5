"""The request flow: the business process, top to bottom.

    open the batch: take a lease on each request (one run per request at a time; one
      another run holds is skipped, and said so); only verified requests pass the gate
    resolve identities (every identity the account's own rows hold, beyond the ticket's)
    screen: the policy's gates (a repeat is allowed, flagged or refused; a child's request
      waits for a verified guardian)
    plan which systems each request concerns
    apply to every system at once (collect, erase, rectify, restrict); a system whose
      rows list another system's keys (uploads.s3_key) waits until that one is done
    verify every system that erased something
    deliver: an encrypted access package for each access request, a signed certificate
      for each erasure (once no partner is still working on it)
    close each request from its steps, publish the outcome, release the leases

Parameters are request ids; everything else comes from the ledger inside the tasks.
"""

from __future__ import annotations

import uuid

from prefect import flow
from prefect.futures import as_completed
from prefect.runtime import flow_run

from dsrflow.errors import raises_safely
from flows.runners import SettingsTaskRunner
from pipeline.leases import Hold, holding
from pipeline.runtime import get_runtime
from tasks.monitoring import RunProgress, tag_run
from tasks.requests import (
    Closed,
    close_requests,
    deliver_results,
    open_requests,
    plan_systems,
    publish_results,
    resolve_identities,
    screen_requests,
)
from tasks.systems import apply_to_system, verify_system


class BatchIncomplete(RuntimeError):
    """Some requests ended failed or partial: the run is marked failed so it shows in the UI."""


def batch_run_name() -> str:
    params = flow_run.parameters
    ids = list(params["request_ids"]) if "request_ids" in params else [params["request_id"]]
    if not ids:  # a run started with nothing to do (a served deployment's check)
        return "dsr-batch-empty"
    records = get_runtime().ledger.get_many(ids[:1])
    first = records[0].ticket_id if records and records[0].ticket_id else ids[0]
    if len(ids) == 1 and records and records[0].type is not None:
        return f"dsr-{records[0].type.value}-{first}"
    return f"dsr-batch-{first}-{len(ids)}"


@flow(
    name="process-requests", flow_run_name=batch_run_name, persist_result=False,
    task_runner=SettingsTaskRunner(),
)
@raises_safely
def process_requests(request_ids: list[str]) -> dict[str, str]:
    """A micro-batch of requests, one pass per system."""
    return _process(request_ids)


@flow(
    name="process-request", flow_run_name=batch_run_name, persist_result=False,
    task_runner=SettingsTaskRunner(),
)
@raises_safely
def process_request(request_id: str) -> dict[str, str]:
    """One request: the batch of one."""
    return _process([request_id])


def _process(request_ids: list[str]) -> dict[str, str]:
    owner = str(flow_run.get_id() or uuid.uuid4())
    gate = open_requests(request_ids, owner)
    outcome = {rid: reason for rid, reason in gate.held.items()}
    if not gate.ready:
        return outcome
    with holding(get_runtime(), owner, gate.ready) as hold:
        closed = _work(hold)
    publish_results(request_ids)

    outcome.update({rid: status.value for rid, status in closed.statuses.items()})
    for rid in hold.lost():  # a stalled run: another one took these over
        outcome.setdefault(rid, "taken over by another run (this run's lease ran out)")
    if closed.unfinished:
        raise BatchIncomplete(
            f"{len(closed.unfinished)} of {len(closed.statuses)} requests did not complete: "
            f"{', '.join(closed.unfinished)}"
        )
    return outcome


def _work(hold: Hold) -> Closed:
    """The batch's work; each step goes only to the requests the run still holds."""
    tag_run(hold.request_ids)
    resolve_identities(hold.still(hold.request_ids))
    screened = screen_requests(hold.still(hold.request_ids))
    plan = plan_systems(hold.still(screened.ready))
    settings = get_runtime().settings
    retry = {"retries": settings.task_retries, "retry_delay_seconds": settings.task_retry_delays}
    progress = RunProgress(sum(len(w) for w in plan.waves) + len(plan.verify))

    for wave in plan.waves:
        applied = {
            apply_to_system.with_options(**retry).submit(system, held): system  # type: ignore[arg-type]
            for system, ids in wave.items() if (held := hold.still(ids))
        }
        for done in as_completed(list(applied)):
            progress.advance(applied[done])

    # Verification runs whether or not the erasure reported success: it is the proof.
    verified = {
        verify_system.with_options(**retry).submit(system, held): system  # type: ignore[arg-type]
        for system, ids in plan.verify.items() if (held := hold.still(ids))
    }
    for done in as_completed(list(verified)):
        progress.advance(f"verification of {verified[done]}")

    deliver_results(hold.still(screened.ready))
    closed = close_requests(hold.still(screened.ready))
    return closed.with_stopped(screened.stopped, screened.failed)
