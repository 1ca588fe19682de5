"""Intake: the ticket queue into the ledger, and batches of requests into runs.

    long-poll the queue (SQS, or any service with its API)
    each ticket: valid → the ledger, once per ticket id, then deleted from the queue
                 invalid → the ledger as `rejected` and the dead-letter queue, with the
                 reason, then deleted; anything unexpected → the dead-letter queue
    every N accepted requests or T seconds: one `process-requests` run for the batch,
      through its deployment (idempotency key: the batch's ids) or in this process

Parameters and task results are counts, queue URLs and request ids: the ticket bodies (they
hold identities) stay inside the `drain-queue` task and never reach Prefect.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from dsrflow import queue
from dsrflow.errors import raises_safely, safe_error
from dsrflow.queue import QueueSettings
from flows.request import BatchIncomplete, process_requests
from tasks.intake import drain_once, queue_settings, start_deployment_run


def dispatch(
    process_deployment: str | None, request_ids: list[str], attempt: str | None = None
) -> None:
    """Start `process-requests` for a batch: through the deployment when one is named,
    else in this process. `attempt` marks a start of requests that may have been started
    before (resume-requests), so that it gets a run of its own."""
    logger = get_run_logger()
    if process_deployment:
        run_id = start_deployment_run(process_deployment, request_ids, attempt)
        logger.info("batch of %d started as flow run %s", len(request_ids), run_id)
        return
    try:
        process_requests(request_ids)
    except BatchIncomplete as exc:
        # The run is marked failed in the UI and the ledger says which requests: go on.
        logger.warning("batch of %d incomplete: %s", len(request_ids), safe_error(exc))


@flow(name="intake", persist_result=False)
@raises_safely
def intake(
    queue_config: QueueSettings | None = None,
    max_batches: int | None = None,
    max_seconds: float | None = None,
) -> dict[str, int]:
    """Tickets from the queue into the ledger, batches into runs, until `max_batches`
    batches were started or `max_seconds` passed (forever when both are unset)."""
    qs = queue_settings(queue_config)
    summary = queue.run_loop(
        lambda n, wait: drain_once(qs, n, wait),
        lambda ids: dispatch(qs.process_deployment, ids),
        qs,
        max_batches=max_batches,
        max_seconds=max_seconds,
    )
    c = summary.counts
    return {
        "received": c.received, "accepted": c.accepted, "redelivered": c.duplicates,
        "rejected": c.rejected, "internal_errors": c.errors, "left_on_queue": c.kept,
        "batches": len(summary.batches), "failed_batches": summary.failed_batches,
    }
