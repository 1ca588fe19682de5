"""The intake flow's tasks: one long poll of the ticket queue (ticket bodies never leave
it), and the start of a batch's run through its deployment."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dsrflow import queue
from dsrflow.errors import raises_safely
from dsrflow.queue import IntakeCounts, QueueSettings
from dsrflow.settings import ConfigError
from pipeline.runtime import get_runtime
from tasks.requests import announce

_TASK: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}

_clients: dict[tuple[str | None, str | None], Any] = {}
_clients_lock = threading.Lock()


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


def batch_key(request_ids: list[str], attempt: str | None = None) -> str:
    """The same batch always gets the same key: a retried dispatch starts no second run.
    `attempt` tells a later start of the same requests apart (resume-requests passes its
    own flow run): Prefect answers a known key with the run it made for it, whatever
    became of that run, so a batch whose run was killed would never run again under the
    key intake gave it."""
    lines = sorted(request_ids) if attempt is None else [*sorted(request_ids), attempt]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return f"dsr-batch-{digest}"


@task(name="drain-queue", **_TASK)
@raises_safely
def drain_once(qs: QueueSettings, max_messages: int, wait_seconds: int) -> IntakeCounts:
    """One long poll, every message handled inside: bodies never leave this task (its
    parameters are the queue's settings, which the intake flow's parameters hold too)."""
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
def start_deployment_run(
    deployment: str, request_ids: list[str], attempt: str | None = None
) -> str:
    """One run of the process deployment for the batch; the idempotency key makes a
    retried start return the same run (`attempt`: see `batch_key`)."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        deployment,
        parameters={"request_ids": request_ids},
        idempotency_key=batch_key(request_ids, attempt),
        timeout=0,
    )
    return str(getattr(run, "id", run))
