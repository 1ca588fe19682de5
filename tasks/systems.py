"""Prefect tasks over systems. Parameters are a system name and request ids; results are
counts. Nothing is cached or persisted: a retry must look at the system again."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dsrflow.errors import raises_safely
from pipeline import steps
from pipeline.runtime import get_runtime
from pipeline.steps import StepResult


@task(name="apply-to-system", task_run_name="apply-{system}", cache_policy=NO_CACHE,
      persist_result=False, retry_jitter_factor=0.5)
@raises_safely
def apply_to_system(system: str, request_ids: list[str]) -> list[StepResult]:
    results = steps.apply_to_system(get_runtime(), system, request_ids)
    _log(system, "applied", results)
    return results


@task(name="verify-system", task_run_name="verify-{system}", cache_policy=NO_CACHE,
      persist_result=False, retry_jitter_factor=0.5)
@raises_safely
def verify_system(system: str, request_ids: list[str]) -> list[StepResult]:
    results = steps.verify_system(get_runtime(), system, request_ids)
    _log(system, "verified", results)
    return results


def _log(system: str, verb: str, results: list[StepResult]) -> None:
    # Counts and request ids only: the log lands in Prefect's database.
    logger = get_run_logger()
    for r in results:
        logger.info(
            "%s %s %s for %s: %s (found %d, deleted %d, anonymized %d, retained %d%s)",
            system, verb, r.action.value, r.request_id, r.status.value, r.found, r.deleted,
            r.anonymized, r.retained,
            "" if r.remaining is None else f", remaining {r.remaining}",
        )
