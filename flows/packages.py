"""Expiring access packages: nothing outlives its delivery link.

    drop   the keys still in the support outbox once their link has expired (recorded
           against the request as never handed over)
    delete local packages past the link's lifetime (an S3 store: give the bucket a
           lifecycle rule with the same lifetime)
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
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


@flow(name="expire-packages", persist_result=False)
@raises_safely
def expire_packages() -> dict[str, int]:
    """Drop unsent keys and delete local packages whose delivery link has expired."""
    return expire_packages_task()
