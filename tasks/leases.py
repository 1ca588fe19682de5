"""A run's hold on its requests while it works (plain Python: the flow opens it, the ledger
keeps it). The gate takes the leases (`steps.open_requests`); `holding` renews them every
third of their lifetime from a background thread and gives them back when the run ends,
however it ends. A run killed outright stops renewing, and its leases expire."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

from dsrflow.errors import safe_error
from tasks.runtime import Runtime

log = logging.getLogger(__name__)


def lease_ttl(rt: Runtime) -> timedelta:
    return timedelta(minutes=rt.settings.lease_minutes)


@contextmanager
def holding(rt: Runtime, owner: str, request_ids: Sequence[str]) -> Iterator[None]:
    """Keep `owner`'s leases on `request_ids` alive for the block, then release them."""
    ttl = lease_ttl(rt)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl.total_seconds() / 3):
            try:
                kept = set(rt.ledger.renew_leases(owner, ttl))
            except Exception as exc:  # the next beat tries again; expiry is the backstop
                log.warning("run %s could not renew its leases: %s", owner, safe_error(exc))
                continue
            lost = [rid for rid in request_ids if rid not in kept]
            if lost:
                log.warning("run %s no longer holds %d of its requests", owner, len(lost))

    beat = threading.Thread(target=renew, name=f"lease-{owner}", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        rt.ledger.release_leases(request_ids, owner)
