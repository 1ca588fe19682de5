"""The package expiry flow's task."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dsrflow.errors import raises_safely
from pipeline import deliverables
from pipeline.runtime import get_runtime


@task(name="expire-packages", cache_policy=NO_CACHE, persist_result=False)
@raises_safely
def expire_packages_task() -> dict[str, int]:
    dropped, deleted = deliverables.expire(get_runtime())
    for request_id in dropped:
        get_run_logger().info("request %s: its package key was never handed over; dropped",
                              request_id)
    return {"keys_dropped": len(dropped), "packages_deleted": len(deleted)}
