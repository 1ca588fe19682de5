"""Request leases: one run per request at a time.

A run (a Prefect flow run, named by its id) takes a lease on each request before it does
anything to it, renews the leases while it works and releases them when it ends. A second
run over the same requests gets none of the leased ones: it skips them and says which run
holds them. A run that dies (SIGKILL, a lost machine) stops renewing; its leases expire and
`resume-requests` takes the requests over.

Every change is one guarded statement for the whole batch (compare-and-set on the holder
and the expiry), so two runs racing for a request cannot both win, on SQLite or on
PostgreSQL, and the number of statements does not grow with the batch beyond one per
`CHUNK` ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select, update

from dsrflow.ledger.batches import chunks
from dsrflow.ledger.schema import requests
from dsrflow.ledger.times import utc as _utc

if TYPE_CHECKING:
    from sqlalchemy import Engine


@dataclass(frozen=True)
class Holder:
    """Who holds a request this run could not take, and until when."""

    owner: str
    expires_at: datetime


@dataclass(frozen=True)
class Taken:
    granted: list[str]
    held: dict[str, Holder]  # request id -> the other run holding it


class LeasesMixin:
    """The lease operations of the ledger (`Ledger` mixes this in)."""

    engine: Engine

    def _audit(self, conn: Connection, event_name: str, request_id: str | None,
               detail: dict[str, Any]) -> None:
        raise NotImplementedError

    def take_leases(
        self, request_ids: Sequence[str], owner: str, ttl: timedelta, at: datetime | None = None
    ) -> Taken:
        """Lease every request that no other run holds (or whose holder's lease expired) to
        `owner` until `at + ttl`; a lease `owner` already holds is extended. One audit
        entry for the batch names the requests taken and any taken over from an expired
        holder."""
        at = at or datetime.now(UTC)
        until = at + ttl
        ids = list(dict.fromkeys(request_ids))
        granted: list[str] = []
        held: dict[str, Holder] = {}
        taken_over: dict[str, str] = {}
        with self.engine.begin() as conn:
            for chunk in chunks(ids):
                before = {
                    row.id: (row.lease_owner, row.lease_expires_at)
                    for row in conn.execute(
                        select(requests.c.id, requests.c.lease_owner,
                               requests.c.lease_expires_at)
                        .where(requests.c.id.in_(chunk)).with_for_update()
                    )
                }
                free = (
                    requests.c.lease_owner.is_(None)
                    | (requests.c.lease_owner == owner)
                    | (requests.c.lease_expires_at < at)
                )
                conn.execute(
                    update(requests).where(requests.c.id.in_(chunk), free)
                    .values(lease_owner=owner, lease_expires_at=until)
                )
                for rid in chunk:
                    if rid not in before:
                        continue
                    holder, expires = before[rid]
                    expires = _utc(expires)
                    if holder is None or holder == owner or (expires is not None
                                                              and expires < at):
                        granted.append(rid)
                        if holder not in (None, owner):
                            taken_over[rid] = str(holder)
                    else:
                        held[rid] = Holder(str(holder), expires or until)
            if granted:
                self._audit(conn, "lease.taken", None, {
                    "owner": owner, "until": until.isoformat(), "requests": granted,
                    **({"taken_over": taken_over} if taken_over else {}),
                })
        return Taken(granted, held)

    def renew_leases(self, owner: str, ttl: timedelta, at: datetime | None = None) -> list[str]:
        """Extend every lease `owner` still holds; the ids it holds. One statement, no audit
        entry (a renewal changes no one's state)."""
        at = at or datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(update(requests).where(requests.c.lease_owner == owner)
                         .values(lease_expires_at=at + ttl))
            return list(conn.execute(
                select(requests.c.id).where(requests.c.lease_owner == owner)).scalars())

    def release_leases(self, request_ids: Sequence[str], owner: str) -> int:
        """Give back the leases `owner` holds on these requests (never another run's)."""
        released = 0
        with self.engine.begin() as conn:
            for chunk in chunks(list(request_ids)):
                released += conn.execute(
                    update(requests)
                    .where(requests.c.id.in_(chunk), requests.c.lease_owner == owner)
                    .values(lease_owner=None, lease_expires_at=None)
                ).rowcount
            if released:
                self._audit(conn, "lease.released", None,
                            {"owner": owner, "requests": list(request_ids)})
        return released

    def expired_leases(self, at: datetime | None = None) -> dict[str, str]:
        """Requests whose run stopped renewing before `at`: request id -> the dead run."""
        at = at or datetime.now(UTC)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(requests.c.id, requests.c.lease_owner)
                .where(requests.c.lease_owner.is_not(None), requests.c.lease_expires_at < at)
                .order_by(requests.c.received_at, requests.c.id)
            )
            return {row.id: str(row.lease_owner) for row in rows}

    def lease_holders(self, request_ids: Sequence[str]) -> dict[str, Holder]:
        """Who holds each of these requests (those nobody holds are left out)."""
        found: dict[str, Holder] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(request_ids)):
                for row in conn.execute(
                    select(requests.c.id, requests.c.lease_owner, requests.c.lease_expires_at)
                    .where(requests.c.id.in_(chunk), requests.c.lease_owner.is_not(None))
                ):
                    expires = _utc(row.lease_expires_at)
                    assert expires is not None
                    found[row.id] = Holder(str(row.lease_owner), expires)
        return found
