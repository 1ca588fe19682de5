"""Prefect tasks over systems. Parameters are a system name and request ids; results are
counts. Nothing is cached or persisted: a retry must look at the system again. Each task
holds a slot of its system's concurrency limit (`limits.systems` in the settings) while it
works, so many workers never run more than that many batches against one system at once;
a retry waits for a slot again, and holds none during its delay."""

from __future__ import annotations

import logging
from collections import Counter

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dsrflow.errors import raises_safely
from dsrflow.model import StepStatus
from pipeline import steps
from pipeline.runtime import get_runtime
from pipeline.steps import StepResult
from tasks.limits import system_slot


@task(name="apply-to-system", task_run_name="apply-{system}", cache_policy=NO_CACHE,
      persist_result=False, retry_jitter_factor=0.5)
@raises_safely
def apply_to_system(system: str, request_ids: list[str]) -> list[StepResult]:
    with system_slot(system):
        results = steps.apply_to_system(get_runtime(), system, request_ids)
    _log(system, "applied", results)
    return results


@task(name="verify-system", task_run_name="verify-{system}", cache_policy=NO_CACHE,
      persist_result=False, retry_jitter_factor=0.5)
@raises_safely
def verify_system(system: str, request_ids: list[str]) -> list[StepResult]:
    with system_slot(system):
        results = steps.verify_system(get_runtime(), system, request_ids)
    _log(system, "verified", results)
    return results


NEEDS_A_LOOK = frozenset({StepStatus.FAILED, StepStatus.BLOCKED})


def _log(system: str, verb: str, results: list[StepResult]) -> None:
    """One line per system and batch: the totals, and the ids of the requests that failed
    or are blocked (a line per request made a batch of thousands a wall of text in the UI, and
    cost a round trip each; every request's own figures are in the batch's table artifact
    and `dsrflow report --request`). Counts and request ids only: the log lands in
    Prefect's database."""
    if not results:
        return
    # A warning when some need a person: the UI filters log lines by level.
    by_status = Counter(r.status.value for r in results)
    stuck = sorted(r.request_id for r in results if r.status in NEEDS_A_LOOK)
    remaining = sum(r.remaining or 0 for r in results)
    get_run_logger().log(
        logging.WARNING if stuck else logging.INFO,
        "%s %s %d requests: %s; found %d, deleted %d, anonymized %d, retained %d%s%s",
        system, verb, len(results), ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())),
        sum(r.found for r in results), sum(r.deleted for r in results),
        sum(r.anonymized for r in results), sum(r.retained for r in results),
        f", remaining {remaining}" if remaining else "",
        f"; failed or blocked: {', '.join(stuck)}" if stuck else "",
    )
