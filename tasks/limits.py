"""Per-system concurrency across workers: Prefect global concurrency limits named
`dsrflow-system-<system>`, one slot held by a system task while it works on its system.

Many workers (and `dsrflow serve`) share one Prefect server; each runs its own batches, so
without a limit ten workers would run ten erasures against one database at once. The
limits come from the settings (`limits.systems`): a process creates or updates each on the
server the first time it needs it (Prefect 3.9 no longer creates a limit on first use:
`create_if_missing` is deprecated and a missing limit is not enforced), and `dsrflow serve`
applies them all when it starts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.runtime import task_run

from pipeline.limits import limit_name, system_limits
from pipeline.runtime import Runtime, get_runtime

# (limit name, size) this process has put on the server: one look-up per limit per process.
_applied: set[tuple[str, int]] = set()
_applied_lock = threading.Lock()


def upsert_limit(name: str, size: int) -> None:
    """Create the limit, or set its size if it exists with another. Two processes may race
    to create it: the loser finds it made (409) and updates it instead."""
    with get_client(sync_client=True) as client:
        try:
            current = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=size))
                return
            except ObjectAlreadyExists:
                current = client.read_global_concurrency_limit_by_name(name)
        if current.limit != size or not current.active:
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=size, active=True))


def apply_limits(rt: Runtime) -> dict[str, int]:
    """Put every limit of the settings on the server (what `dsrflow serve` does when it
    starts, so they show in the UI before the first run). Returns limit name -> size."""
    applied = {}
    for system, size in system_limits(rt).items():
        _ensure(limit_name(system), size)
        applied[limit_name(system)] = size
    return applied


def _ensure(name: str, size: int) -> None:
    with _applied_lock:
        if (name, size) in _applied:
            return
        upsert_limit(name, size)
        _applied.add((name, size))


@contextmanager
def system_slot(system: str) -> Iterator[None]:
    """Hold one slot of the system's limit for the block (waiting for one as long as it
    takes); a system without a limit in the settings is entered at once, with no call to
    the server."""
    rt = get_runtime()
    size = system_limits(rt).get(system)
    if size is None:
        yield
        return
    name = limit_name(system)
    _ensure(name, size)
    run_id = task_run.get_id()
    holder = ConcurrencyLeaseHolder(type="task_run", id=UUID(run_id)) if run_id else None
    with concurrency(
        name,
        lease_duration=rt.settings.limits.lease_seconds,
        # The limit was just made: if it is gone, someone removed it on purpose
        # mid-run, and running unprotected would break the promise silently.
        strict=True,
        holder=holder,
        # A renewal that fails once (the server restarting) must not abort an erasure
        # half-way: the lease outlives a few missed renewals.
        raise_on_lease_renewal_failure=False,
    ):
        yield
