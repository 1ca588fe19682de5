"""The resume flow's tasks: find the requests nobody started and those whose run died, and
mark dead flow runs crashed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import task
from prefect.cache_policies import NO_CACHE

from dsrflow.errors import raises_safely
from pipeline.runtime import get_runtime
from tasks.monitoring import crash_runs


def now() -> datetime:
    """The tasks' clock (tests replace it)."""
    return datetime.now(UTC)


@task(name="find-stranded", cache_policy=NO_CACHE, persist_result=False)
@raises_safely
def find_stranded(grace_minutes: float) -> list[str]:
    return get_runtime().ledger.stranded(now() - timedelta(minutes=grace_minutes))


@task(name="find-of-age", cache_policy=NO_CACHE, persist_result=False)
@raises_safely
def find_of_age() -> list[str]:
    """Children's requests that waited for a guardian, whose subject has come of age: back
    to verified, to be screened again (policy 7.x)."""
    return get_runtime().ledger.came_of_age(now().date())


@task(name="release-expired-holds", cache_policy=NO_CACHE, persist_result=False)
@raises_safely
def release_expired_holds() -> list[str]:
    """Legal holds whose end date passed are released; what no hold keeps any more is
    re-queued (the follow-up requests' ids)."""
    ledger = get_runtime().ledger
    ledger.expire_holds(now())
    return ledger.requeue_released(now())


@task(name="find-abandoned", cache_policy=NO_CACHE, persist_result=False)
@raises_safely
def find_abandoned() -> dict[str, str]:
    """Requests whose run's lease expired: request id -> the dead run."""
    return get_runtime().ledger.expired_leases(now())


@task(name="mark-crashed", cache_policy=NO_CACHE, persist_result=False)
@raises_safely
def mark_crashed(runs: list[str]) -> int:
    """Mark the flow runs that stopped renewing their leases crashed, where Prefect still
    thinks they run; the number marked."""
    return crash_runs(runs, "its process stopped renewing its request leases")
