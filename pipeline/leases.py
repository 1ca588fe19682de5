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
from pipeline.runtime import Runtime

log = logging.getLogger(__name__)


def lease_ttl(rt: Runtime) -> timedelta:
    return timedelta(minutes=rt.settings.lease_minutes)


class Hold:
    """What a run still holds of its requests, as its last renewal found: a run whose
    renewals stalled past the lease's life (a paused machine, a ledger outage) may find
    another run has taken some over, and must not go on working on those."""

    def __init__(self, rt: Runtime, owner: str, request_ids: Sequence[str]) -> None:
        self.rt, self.owner, self.ttl = rt, owner, lease_ttl(rt)
        self.request_ids = list(request_ids)
        self._held = set(request_ids)
        self._lock = threading.Lock()

    def still(self, request_ids: Sequence[str]) -> list[str]:
        """Those of `request_ids` this run still holds."""
        with self._lock:
            return [rid for rid in request_ids if rid in self._held]

    def lost(self) -> list[str]:
        with self._lock:
            return [rid for rid in self.request_ids if rid not in self._held]

    def renew(self) -> None:
        """Extend the leases this run still holds; note any another run has taken."""
        kept = set(self.rt.ledger.renew_leases(self.owner, self.ttl))
        with self._lock:
            lost = self._held - kept
            self._held &= kept
        if lost:
            log.warning("run %s no longer holds %d of its requests: another run took them "
                        "over; it stops working on them", self.owner, len(lost))


@contextmanager
def holding(rt: Runtime, owner: str, request_ids: Sequence[str]) -> Iterator[Hold]:
    """Keep `owner`'s leases on `request_ids` alive for the block (renewed every third of
    their life from a background thread), then release them."""
    hold = Hold(rt, owner, request_ids)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(hold.ttl.total_seconds() / 3):
            try:
                hold.renew()
            except Exception as exc:  # the next beat tries again; expiry is the backstop
                log.warning("run %s could not renew its leases: %s", owner, safe_error(exc))

    thread = threading.Thread(target=beat, name=f"lease-{owner}", daemon=True)
    thread.start()
    try:
        yield hold
    finally:
        stop.set()
        thread.join()
        rt.ledger.release_leases(request_ids, owner)
