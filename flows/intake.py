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

import hashlib
import threading
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dsrflow import queue
from dsrflow.errors import raises_safely, safe_error
from dsrflow.queue import IntakeCounts, QueueSettings
from dsrflow.settings import ConfigError
from flows.request import BatchIncomplete, process_requests
from pipeline.runtime import get_runtime
from tasks.requests import announce

_TASK: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}

_clients: dict[tuple[str | None, str | None], Any] = {}
_clients_lock = threading.Lock()
_active: QueueSettings | None = None  # the queue of the running intake flow


def queue_settings(override: QueueSettings | None = None) -> QueueSettings:
    """The flow's parameter, else the `queue:` section of the settings."""
    found = override or getattr(get_runtime().settings, "queue", None)
    if found is None:
        raise ConfigError("no ticket queue configured: add `queue:` (queue_url, "
                         "dead_letter_url, ...) to dsrflow.yaml")
    return QueueSettings.model_validate(found)


def sqs_client(qs: QueueSettings) -> Any:
    """One boto3 client per endpoint and region per process (clients are thread-safe)."""
    key = (qs.endpoint_url, qs.region)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = queue.make_client(qs)
        return _clients[key]


def batch_key(request_ids: list[str]) -> str:
    """The same batch always gets the same key: a retried dispatch starts no second run."""
    digest = hashlib.sha256("\n".join(sorted(request_ids)).encode()).hexdigest()
    return f"dsr-batch-{digest}"


@task(name="drain-queue", **_TASK)
@raises_safely
def drain_once(max_messages: int, wait_seconds: int) -> IntakeCounts:
    """One long poll, every message handled inside: bodies never leave this task."""
    qs = _active
    if qs is None:
        raise RuntimeError("drain-queue runs inside the intake flow")
    rt = get_runtime()
    counts = queue.drain(rt.ledger, rt.datamap, sqs_client(qs), qs, max_messages, wait_seconds,
                         rt.settings.phone_regions)
    for record in rt.ledger.get_many(counts.ready):
        announce(record, "dsr.request.received")
    if counts.received or counts.poll_failed:
        get_run_logger().info(
            "received %d: accepted %d, redelivered %d, rejected %d, internal errors %d, "
            "left on the queue %d%s", counts.received, counts.accepted, counts.duplicates,
            counts.rejected, counts.errors, counts.kept,
            "; the poll failed" if counts.poll_failed else "",
        )
    return counts


@task(name="start-batch", **_TASK)
@raises_safely
def start_deployment_run(deployment: str, request_ids: list[str]) -> str:
    """One run of the process deployment for the batch; the idempotency key makes a
    retried start return the same run."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        deployment,
        parameters={"request_ids": request_ids},
        idempotency_key=batch_key(request_ids),
        timeout=0,
    )
    return str(getattr(run, "id", run))


def dispatch(process_deployment: str | None, request_ids: list[str]) -> None:
    """Start `process-requests` for a batch: through the deployment when one is named,
    else in this process."""
    logger = get_run_logger()
    if process_deployment:
        run_id = start_deployment_run(process_deployment, request_ids)
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
    global _active
    qs = queue_settings(queue_config)
    _active = qs
    try:
        summary = queue.run_loop(
            lambda n, wait: drain_once(n, wait),
            lambda ids: dispatch(qs.process_deployment, ids),
            qs,
            max_batches=max_batches,
            max_seconds=max_seconds,
        )
    finally:
        _active = None
    c = summary.counts
    return {
        "received": c.received, "accepted": c.accepted, "redelivered": c.duplicates,
        "rejected": c.rejected, "internal_errors": c.errors, "left_on_queue": c.kept,
        "batches": len(summary.batches), "failed_batches": summary.failed_batches,
    }
