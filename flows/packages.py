"""Expiring access packages: nothing outlives its delivery link.

    drop   the keys still in the support outbox once their link has expired (recorded
           against the request as never handed over)
    delete local packages past the link's lifetime (an S3 store: give the bucket a
           lifecycle rule with the same lifetime)
"""

from __future__ import annotations

from prefect import flow

from dsrflow.errors import raises_safely
from tasks.packages import expire_packages_task


@flow(name="expire-packages", persist_result=False)
@raises_safely
def expire_packages() -> dict[str, int]:
    """Drop unsent keys and delete local packages whose delivery link has expired."""
    return expire_packages_task()
