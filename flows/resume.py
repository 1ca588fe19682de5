"""Resume: verified requests that no run picked up, requests whose run died, and children's
requests that waited for a guardian until the child came of age.

    find the requests verified more than `grace_minutes` ago and still waiting
    find the children's requests whose subject has come of age (policy 7.x): verified
      again, to be screened on today's birth date
    release the legal holds whose end date passed, and re-queue what they held back
    find the requests whose run stopped renewing its lease (killed, its machine lost),
      and mark that flow run crashed in Prefect
    start `process-requests` for them, in batches (through its deployment, or here)

Two ways a request ends up there: a person confirms a waiting request's identity
(`dsrflow verify`), which records it and starts nothing; or intake records a ticket and
crashes before starting its batch. Either way the deadline runs on, so a schedule looks
for them. The grace period leaves a batch that intake is about to start alone; if both
start one anyway, the request's lease lets only one of them work on it.

A run that is killed leaves its requests `in_progress` with a step `running`, and Prefect
shows its flow run `RUNNING` for ever. Its leases stop being renewed and expire
(`lease_minutes`); this flow then marks the dead flow run crashed and runs the requests
again: every step is idempotent, and counts add up.
"""

from __future__ import annotations

import uuid

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from dsrflow.errors import raises_safely
from flows.intake import dispatch
from pipeline.runtime import get_runtime
from tasks.resume import (
    find_abandoned,
    find_of_age,
    find_stranded,
    mark_crashed,
    release_expired_holds,
)


@flow(name="resume-requests", persist_result=False)
@raises_safely
def resume_requests(
    grace_minutes: float = 30,
    process_deployment: str | None = None,
    batch_size: int | None = None,
) -> dict[str, int]:
    """Start `process-requests` for every verified request left waiting longer than
    `grace_minutes`, `batch_size` at a time (default: the settings' `batches.size`)."""
    abandoned = find_abandoned()
    if abandoned:
        crashed = mark_crashed(sorted(set(abandoned.values())))
        get_run_logger().info("%d requests were held by runs that died (%d marked crashed)",
                              len(abandoned), crashed)
    of_age = find_of_age()
    released = release_expired_holds()
    stranded = list(dict.fromkeys(
        [*abandoned, *of_age, *released, *find_stranded(grace_minutes)]))
    sizes = get_runtime().settings.batches
    batches = (sizes.model_copy(update={"size": batch_size}) if batch_size else sizes).split(
        stranded)
    # Keyed by this run: a retried start inside it returns the same run, and a batch
    # intake started under the same ids (whose run died) gets a new one.
    attempt = f"resume-{flow_run.get_id() or uuid.uuid4()}"
    for batch in batches:
        dispatch(process_deployment, batch, attempt)
    if stranded:
        get_run_logger().info("%d verified requests were waiting; %d batches started",
                              len(stranded), len(batches))
    return {"resumed": len(stranded), "abandoned": len(abandoned), "of_age": len(of_age),
            "batches": len(batches)}
