"""The ledger: the system of record for requests, their steps and the audit trail.

Identities are kept encrypted and only while a request is open; look-ups go through keyed
tokens, which are all that remain once the request is closed.
"""

from __future__ import annotations

import fcntl
import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    null,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from dsrflow.crypto import Keyring, Pseudonymizer, keyed_digest, new_key
from dsrflow.deadlines import CalendarUnavailable, Deadlines
from dsrflow.errors import safe_error
from dsrflow.files import private_file
from dsrflow.identities import Identity, Subject
from dsrflow.ledger.batches import chunks, shapes
from dsrflow.ledger.gates import GatesMixin
from dsrflow.ledger.holds import HoldsMixin
from dsrflow.ledger.leases import LeasesMixin
from dsrflow.ledger.rows import PartnerRequest, RequestRecord, StepRecord
from dsrflow.ledger.schema import (
    audit_events,
    audit_head,
    identity_tokens,
    partner_requests,
    requests,
    steps,
    tombstones,
)
from dsrflow.ledger.steps import StepsMixin
from dsrflow.ledger.times import utc as _utc
from dsrflow.ledger.tombstones import TombstonesMixin
from dsrflow.model import (
    DEFAULT_PHONE_REGIONS,
    PARTNER_TRANSITIONS,
    PartnerStatus,
    Regime,
    RequestType,
    Status,
    StepAction,
    StepStatus,
    check_transition,
)
from dsrflow.tickets import Rejection, Ticket

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x647372666C6F77  # "dsrflow": the advisory lock key for migrations
GENESIS = "0" * 64


class UnknownRequest(LookupError):
    pass


class ClosedRequest(ValueError):
    """The request is closed; what was asked of it went with it."""


class ExtensionRefused(ValueError):
    """An extension the regime or the request's state does not allow; the message says
    why, with the dates involved."""


@dataclass(frozen=True)
class Accepted:
    """A ticket recorded (or found on record) as a request."""

    request_id: str
    created: bool  # False: the ticket id was already on record (a redelivery)
    status: Status
    deadline_error: str | None


def now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """An exclusive lock on `<database>.lock` for SQLite files (processes on one machine
    share a SQLite file); nothing for other databases."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(private_file(Path(f"{database}.lock")), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        # Made 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
        # main file's mode, so they are the owner's only too (folders made 0700).
        private_file(Path(database))
    engine = create_engine(url, connect_args={"timeout": 30})

    # pysqlite's own transaction handling defers locking until the first write, so two
    # writers that both read first deadlock on the upgrade. Take the write lock at BEGIN
    # (SQLAlchemy's documented recipe). `migrate` switches the file to WAL, so readers
    # never wait.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Ledger(StepsMixin, LeasesMixin, GatesMixin, HoldsMixin, TombstonesMixin):
    def __init__(self, url: str, keyring: Keyring, deadlines: Deadlines | None = None) -> None:
        self.engine = make_engine(url)
        self.keyring = keyring
        self.deadlines = deadlines or Deadlines()

    # -- schema -----------------------------------------------------------------------
    def _now(self) -> datetime:
        return now()  # looked up when called: tests set the module's clock

    def migrate(self) -> None:
        """Bring the schema to head. Several workers may start at once on a new database:
        they take turns (an advisory lock on PostgreSQL, a file lock beside a SQLite file),
        and the ones after the first find nothing to do."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with _sqlite_file_lock(self.engine):
            if self.engine.dialect.name == "sqlite":
                # Persistent, once per file, and only outside a transaction: on the driver's
                # own connection, which has no implicit BEGIN.
                raw = self.engine.raw_connection()
                try:
                    raw.driver_connection.execute("PRAGMA journal_mode=WAL")  # type: ignore[union-attr]
                finally:
                    raw.close()
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                 {"key": MIGRATION_LOCK})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")

    def dispose(self) -> None:
        self.engine.dispose()

    # -- intake -----------------------------------------------------------------------
    def accept(
        self, ticket: Ticket, datamap_version: str, policy_version: str
    ) -> tuple[str, bool]:
        """Record a valid ticket as a request, once per ticket id. Returns the request id
        and whether it was new (a redelivered ticket returns the existing id)."""
        accepted = self.record_ticket(ticket, datamap_version, policy_version)
        return accepted.request_id, accepted.created

    def record_ticket(
        self, ticket: Ticket, datamap_version: str, policy_version: str
    ) -> Accepted:
        """`accept`, answering also with the request's status and deadline problem, which
        intake reports (read back only for a ticket already on record)."""
        existing = self.find_by_ticket(ticket.ticket_id)
        if existing is not None:
            return self._accepted(existing)
        request_id = str(uuid.uuid4())
        received = ticket.received_at.astimezone(UTC)
        verified_at = (
            ticket.verification.verified_at.astimezone(UTC)  # type: ignore[union-attr]
            if ticket.verified else None
        )
        # None where the clock waits for identification that has not arrived (UK GDPR):
        # `mark_verified` starts it.
        start = self.deadlines.clock_start(ticket.regime, received, verified_at)
        due, deadline_error = self._due(ticket.regime, start)
        status = Status.VERIFIED if ticket.verified else Status.AWAITING_VERIFICATION
        secret = {
            "identities": [i.model_dump(mode="json") for i in ticket.identities],
            "corrections": ticket.corrections or {},
            # How the subject's phone numbers read nationally; the systems are searched
            # for national spellings only in this region.
            "phone_region": ticket.phone_region,
        }
        guardian = ticket.guardian
        scope = sorted(ticket.scope) if ticket.scope else None
        if guardian is not None:
            # To reach them, never to search: they are not tokenized as the subject's.
            secret["guardian"] = [i.model_dump(mode="json") for i in guardian.identities]
            if ticket.type is RequestType.CONSENT_WITHDRAWAL:
                # A guardian withdrawing consent for a child withdraws it for everything
                # (policy 7.3: the child's data is deleted), whatever scope was named.
                scope = None
        stamp = now()
        row = {
            "id": request_id,
            "ticket_id": ticket.ticket_id,
            "type": ticket.type.value,
            "regime": ticket.regime.value,
            "channel": ticket.channel,
            "scope": scope,
            "status": status.value,
            "verification_method": ticket.verification.method if ticket.verification else None,
            "guardian_relation": guardian.relation.value if guardian else None,
            "guardian_verification_method": (
                guardian.verification.method if guardian and guardian.verification else None
            ),
            "guardian_verified_at": (
                guardian.verification.verified_at.astimezone(UTC)  # type: ignore[union-attr]
                if guardian and guardian.verified else None
            ),
            "received_at": received,
            "verified_at": verified_at,
            "due_at": due,
            "deadline_error": deadline_error,
            "subject_enc": self.keyring.encrypt(json.dumps(secret).encode(), request_id),
            "datamap_version": datamap_version,
            "policy_version": policy_version,
            "created_at": stamp,
            "updated_at": stamp,
        }
        tokens = {
            (i.type.value, self.keyring.token(i.type.value, i.value)) for i in ticket.identities
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(requests).values(row))
                conn.execute(
                    insert(identity_tokens),
                    [{"request_id": request_id, "type": t, "token": v} for t, v in tokens],
                )
                self._audit(
                    conn,
                    "request.received",
                    request_id,
                    {"ticket_id": ticket.ticket_id, "type": ticket.type.value,
                     "status": status.value,
                     **({"guardian": guardian.relation.value,
                         "guardian_verified": guardian.verified} if guardian else {}),
                     **({"scope_asked": sorted(ticket.scope or []), "scope": "everything"}
                        if guardian and scope is None and ticket.scope else {})},
                )
        except IntegrityError:
            # Another intake won the race for this ticket id.
            found = self.find_by_ticket(ticket.ticket_id)
            if found is None:
                raise
            return self._accepted(found)
        return Accepted(request_id, True, status, deadline_error)

    def _accepted(self, request_id: str) -> Accepted:
        """A ticket found on record: its request as it stands."""
        record = self.get(request_id)
        return Accepted(request_id, False, record.status, record.deadline_error)

    def reject(self, rejection: Rejection, received_at: datetime | None = None) -> str:
        """Keep an invalid ticket on record, with its reason, so the report lists every
        ticket ever received."""
        request_id = str(uuid.uuid4())
        stamp = now()
        with self.engine.begin() as conn:
            conn.execute(
                insert(requests).values(
                    id=request_id,
                    ticket_id=rejection.ticket_id,
                    type=rejection.type,
                    regime=rejection.regime,
                    channel=rejection.channel,
                    status=Status.REJECTED.value,
                    reason=rejection.reason,
                    # UTC before storing: SQLite keeps no offset, and reads back as UTC.
                    received_at=(received_at or stamp).astimezone(UTC),
                    created_at=stamp,
                    updated_at=stamp,
                )
            )
            self._audit(
                conn, "ticket.rejected", request_id,
                {"ticket_id": rejection.ticket_id, "reason": rejection.reason},
            )
        return request_id

    def find_by_ticket(self, ticket_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(requests.c.id).where(
                    requests.c.ticket_id == ticket_id, requests.c.status != Status.REJECTED.value
                )
            ).scalar_one_or_none()

    def known_tickets(self, ticket_ids: Sequence[str]) -> set[str]:
        """Those of `ticket_ids` already recorded as requests (one statement per chunk)."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in chunks(sorted(set(ticket_ids))):
                found |= set(conn.execute(
                    select(requests.c.ticket_id).where(
                        requests.c.ticket_id.in_(chunk),
                        requests.c.status != Status.REJECTED.value)).scalars())
        return found

    def find_by_identity(self, identity: Identity) -> list[str]:
        token = self.keyring.token(identity.type.value, identity.value)
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(identity_tokens.c.request_id).where(identity_tokens.c.token == token)
                ).scalars()
            )

    # -- reading ----------------------------------------------------------------------
    def get(self, request_id: str) -> RequestRecord:
        records = self.get_many([request_id])
        if not records:
            raise UnknownRequest(f"no request {request_id}")
        return records[0]

    def get_many(self, request_ids: Sequence[str]) -> list[RequestRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(requests).where(requests.c.id.in_(list(request_ids))))
            by_id = {row.id: RequestRecord.from_row(row._mapping) for row in rows}
        return [by_id[i] for i in request_ids if i in by_id]

    def all(self) -> list[RequestRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(requests).order_by(requests.c.received_at, requests.c.id))
            return [RequestRecord.from_row(row._mapping) for row in rows]

    def runnable(self) -> list[str]:
        """Requests that a run would pick up: verified, or left unfinished."""
        wanted = [Status.VERIFIED, Status.IN_PROGRESS, Status.FAILED, Status.PARTIALLY_COMPLETED]
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(requests.c.id)
                    .where(requests.c.status.in_([s.value for s in wanted]))
                    .order_by(requests.c.received_at, requests.c.id)
                ).scalars()
            )

    def stranded(self, before: datetime) -> list[str]:
        """Verified requests no run has picked up since `before` (their status has not
        changed since): verified by hand after waiting, or recorded by an intake that
        crashed before starting their batch. Oldest first."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(requests.c.id)
                    .where(requests.c.status == Status.VERIFIED.value)
                    .where(requests.c.updated_at < before.astimezone(UTC))
                    .order_by(requests.c.received_at, requests.c.id)
                ).scalars()
            )

    def subjects(self, request_ids: Iterable[str]) -> list[Subject]:
        """Decrypt the identities of open requests. Only tasks call this, and only for the
        duration of a connector call."""
        out = []
        for rid, regime, secret in self._secrets(request_ids):
            if "phone_region" in secret:
                region = secret["phone_region"]
            else:  # recorded before regions were kept: the regime's default
                region = DEFAULT_PHONE_REGIONS.get(Regime(regime)) if regime else None
            out.append(Subject(
                request_id=rid,
                identities=tuple(Identity.stored(i["type"], i["value"])
                                 for i in secret["identities"]),
                phone_region=region,
            ))
        return out

    def corrections(self, request_id: str) -> dict[str, str]:
        for _, _, secret in self._secrets([request_id]):
            return dict(secret.get("corrections") or {})
        return {}

    def _secrets(self, request_ids: Iterable[str]) -> Iterator[tuple[str, str | None,
                                                                      dict[str, Any]]]:
        """Each open request's id, regime and decrypted secrets, in the order asked."""
        ids = list(request_ids)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(requests.c.id, requests.c.regime, requests.c.subject_enc)
                .where(requests.c.id.in_(ids))
            ).all()
        order = {rid: n for n, rid in enumerate(ids)}
        for row in sorted(rows, key=lambda r: order[r.id]):
            if row.subject_enc is None:
                continue  # closed: the identities are gone, by design
            yield row.id, row.regime, json.loads(self.keyring.decrypt(row.subject_enc, row.id))

    def add_identities(self, request_id: str, found: Iterable[Identity]) -> None:
        """`add_identities_many` for one request."""
        self.add_identities_many({request_id: found})

    def add_identities_many(self, found: Mapping[str, Iterable[Identity]]) -> None:
        """Remember identities learnt while processing (encrypted, like the ticket's own),
        so a later look-up still finds the subject after erasure removed the originals.
        One transaction for the batch."""
        learnt = {rid: list(ids) for rid, ids in found.items()}
        if not any(learnt.values()):
            return
        with self.engine.begin() as conn:
            # Locked: parallel steps may learn identities at once; none may be lost.
            blobs = self._locked_many(conn, requests.c.subject_enc,
                                      [rid for rid, ids in learnt.items() if ids])
            existing: set[tuple[str, str, str]] = set()
            for chunk in chunks(list(blobs)):
                existing |= set(conn.execute(
                    select(identity_tokens.c.request_id, identity_tokens.c.type,
                           identity_tokens.c.token)
                    .where(identity_tokens.c.request_id.in_(chunk))).tuples())
            secrets, fresh = [], []
            for rid, blob in blobs.items():
                if blob is None:
                    continue  # closed meanwhile: its identities are gone, and stay gone
                secret = json.loads(self.keyring.decrypt(blob, rid))
                known = {(i["type"], i["value"]) for i in secret["identities"]}
                new = sorted({(i.type.value, i.value) for i in learnt[rid]} - known)
                if not new:
                    continue
                secret["identities"] += [{"type": t, "value": v} for t, v in new]
                secrets.append({"_id": rid, "_blob": self.keyring.encrypt(
                    json.dumps(secret).encode(), rid)})
                for t, v in new:
                    token = self.keyring.token(t, v)
                    if (rid, t, token) not in existing:
                        existing.add((rid, t, token))
                        fresh.append({"request_id": rid, "type": t, "token": token})
            if secrets:
                conn.execute(update(requests).where(requests.c.id == bindparam("_id"))
                             .values(subject_enc=bindparam("_blob")), secrets)
            if fresh:
                conn.execute(insert(identity_tokens), fresh)

    def pseudonymizer(self, request_id: str) -> Pseudonymizer:
        """The request's pseudonym key (`pseudonymizers` for a batch of one)."""
        return self.pseudonymizers([request_id])[request_id]

    def pseudonymizers(self, request_ids: Sequence[str]) -> dict[str, Pseudonymizer]:
        """Each request's pseudonym key, made on first use and kept (encrypted) until the
        request closes, so a retried step writes the same pseudonyms. One transaction for
        the batch: the keys it lacks are minted together."""
        ids = list(dict.fromkeys(request_ids))
        keys: dict[str, Pseudonymizer] = {}
        with self.engine.begin() as conn:
            # Locked: the systems of a batch ask at the same moment, and must all get the
            # same key, or one person's pseudonyms would differ from system to system.
            rows = {}
            for chunk in chunks(ids):
                for found in conn.execute(
                    select(requests.c.id, requests.c.status, requests.c.pseudonym_key_enc)
                    .where(requests.c.id.in_(chunk)).with_for_update()
                ):
                    rows[found.id] = found
            minted = []
            for rid in ids:
                row = rows.get(rid)
                if row is None:
                    raise UnknownRequest(f"no request {rid}")
                if row.pseudonym_key_enc is not None:
                    keys[rid] = Pseudonymizer(
                        self.keyring.decrypt(row.pseudonym_key_enc, rid + ":pn"))
                    continue
                if not Status(row.status).is_open:
                    raise ClosedRequest(f"request {rid} is {row.status}: its key is gone")
                key = new_key()
                keys[rid] = Pseudonymizer(key)
                minted.append({"_rid": rid,
                               "_key": self.keyring.encrypt(key, rid + ":pn")})
            if minted:
                conn.execute(
                    update(requests).where(requests.c.id == bindparam("_rid"))
                    .values(pseudonym_key_enc=bindparam("_key")),
                    minted,
                )
        return keys

    def _locked(self, conn: Connection, column: Any, request_id: str) -> Any:
        """One column of a request's row, locked until the transaction ends."""
        found = conn.execute(
            select(requests.c.id, column).where(requests.c.id == request_id).with_for_update()
        ).one_or_none()
        if found is None:
            raise UnknownRequest(f"no request {request_id}")
        return found[1]

    def _locked_many(self, conn: Connection, column: Any,
                     request_ids: Sequence[str]) -> dict[str, Any]:
        """One column of each request's row, locked until the transaction ends (in the
        order given; raises UnknownRequest for an id not in the ledger)."""
        found: dict[str, Any] = {}
        for chunk in chunks(list(dict.fromkeys(request_ids))):
            found.update(conn.execute(
                select(requests.c.id, column).where(requests.c.id.in_(chunk))
                .with_for_update()).tuples().all())
        if missing := [rid for rid in request_ids if rid not in found]:
            raise UnknownRequest(f"no request {missing[0]}")
        return {rid: found[rid] for rid in dict.fromkeys(request_ids)}

    # -- status -----------------------------------------------------------------------
    def transition(
        self, request_id: str, target: Status, reason: str | None = None,
        expect: frozenset[Status] | None = None, **values: Any,
    ) -> bool:
        """Move a request to `target`. `reason` explains the new status, and only it: a
        transition without one clears the old reason, so a request that completes on a rerun
        does not go on showing the failure that made the rerun necessary.

        `expect` names the states the caller means to move it from: if the request has
        moved on meanwhile (a callback closed it while a run was closing it too), nothing
        changes, the lost write is on record in the audit trail, and the answer is False.
        Without `expect`, a transition the table does not allow raises `InvalidTransition`."""
        with self.engine.begin() as conn:
            current = Status(self._locked(conn, requests.c.status, request_id))
            if expect is not None and current not in expect and current is not target:
                self._audit(conn, "request.status_lost", request_id, {
                    "to": target.value, "found": current.value,
                    "expected": sorted(s.value for s in expect),
                })
                return False
            self._transition(conn, request_id, current, target, reason, values)
        return True

    def transition_many(
        self, moves: Mapping[str, tuple[Status, str | None]], expect: frozenset[Status],
    ) -> dict[str, Status]:
        """Move each request to its (target, reason), as `transition` with `expect` does,
        for a batch in one transaction: the rows locked together, one audit entry listing
        every move (and one listing the moves lost to a request that had moved on). Returns
        each request's status afterwards: its target, or where it was found."""
        if not moves:
            return {}
        stamp = now()
        with self.engine.begin() as conn:
            found = self._locked_many(conn, requests.c.status, list(moves))
            after: dict[str, Status] = {}
            moved, lost, updates = [], [], []
            moved_ids: set[str] = set()
            for rid, (target, reason) in moves.items():
                current = Status(found[rid])
                if current is target:
                    after[rid] = target  # idempotent: a retried step sets it again
                    continue
                if current not in expect:
                    lost.append({"request_id": rid, "to": target.value, "found": current.value})
                    after[rid] = current
                    continue
                check_transition(current, target)
                updates.append(_status_changes(rid, target, reason, stamp))
                moved_ids.add(rid)
                moved.append({"request_id": rid, "from": current.value, "to": target.value,
                              "reason": reason})
                after[rid] = target
            for shape in shapes(updates):
                columns = [c for c in shape[0] if c != "_id"]
                conn.execute(update(requests).where(requests.c.id == bindparam("_id"))
                             .values({c: bindparam(f"_{c}") for c in columns}),
                             [{"_id": u["_id"], **{f"_{c}": u[c] for c in columns}}
                              for u in shape])
            self._tombstones(conn, [rid for rid, (target, _) in moves.items()
                                    if target is Status.COMPLETED and rid in moved_ids], stamp)
            if moved:
                self._audit(conn, "request.status", None, {"moves": moved})
            if lost:
                self._audit(conn, "request.status_lost", None, {
                    "moves": lost, "expected": sorted(s.value for s in expect)})
        return after

    def _transition(
        self, conn: Connection, request_id: str, current: Status, target: Status,
        reason: str | None, values: dict[str, Any],
    ) -> None:
        """The transition itself, on a connection that holds the request's row lock."""
        if current is target:
            return  # idempotent: a retried step may set the same status again
        check_transition(current, target)
        stamp = now()
        changes = {**_status_changes(request_id, target, reason, stamp), **values}
        del changes["_id"]
        conn.execute(update(requests).where(requests.c.id == request_id).values(changes))
        if target is Status.COMPLETED:
            self._tombstones(conn, [request_id], stamp)
        self._audit(
            conn, "request.status", request_id,
            {"from": current.value, "to": target.value, "reason": reason},
        )

    def _tombstones(self, conn: Connection, request_ids: Sequence[str], at: datetime) -> None:
        """Erasures that completed leave what they covered (in the same transaction as
        their completion): the systems whose erase succeeded, the type and scope."""
        if not request_ids:
            return
        rows, erased = {}, defaultdict(set)
        for chunk in chunks(list(request_ids)):
            rows.update({r.id: r for r in conn.execute(
                select(requests.c.id, requests.c.type, requests.c.scope)
                .where(requests.c.id.in_(chunk)))})
            for rid, system in conn.execute(
                select(steps.c.request_id, steps.c.system).where(
                    steps.c.request_id.in_(chunk), steps.c.action == "erase",
                    steps.c.status == "succeeded")).tuples():
                erased[rid].add(system)
        stones = [{"request_id": rid, "type": row.type, "scope": row.scope,
                   "systems": sorted(erased[rid]), "completed_at": at}
                  for rid, row in rows.items()
                  if row.type is not None and RequestType(row.type).erases]
        if stones:
            conn.execute(insert(tombstones), stones)

    def mark_verified(self, request_id: str, method: str, verified_at: datetime) -> None:
        """The subject's identity was confirmed after the ticket arrived. Where the clock
        waited for it (UK GDPR), the due date is set now, from the verification time."""
        verified_at = verified_at.astimezone(UTC)
        values: dict[str, Any] = {"verification_method": method, "verified_at": verified_at}
        with self.engine.begin() as conn:
            # Read under the row lock: `recompute_unknown_deadlines` may set the due date
            # at the same moment, and an older "unknown" must not overwrite it.
            self._locked(conn, requests.c.id, request_id)
            row = conn.execute(select(requests).where(requests.c.id == request_id)).one()
            record = RequestRecord.from_row(row._mapping)
            if record.due_at is None and record.regime is not None:
                # A request whose calendar was missing at intake gets another try, from
                # receipt (its clock did not wait), in case a calendar now has the year.
                start = self.deadlines.clock_start(
                    record.regime, record.received_at, verified_at
                )
                due, error = self._due(record.regime, start)
                if due is not None or error is not None:
                    values.update(due_at=due, deadline_error=error)
            self._transition(conn, request_id, record.status, Status.VERIFIED, None, values)

    def _due(self, regime: Regime, start: datetime | None) -> tuple[datetime | None, str | None]:
        """(due date, deadline error) for a clock started at `start` (None: not started)."""
        if start is None:
            return None, None
        try:
            return self.deadlines.due(regime, start), None
        except CalendarUnavailable as exc:
            # Accept the request anyway (losing it would be worse) and flag it loudly.
            return None, safe_error(exc, typed=False)

    def recompute_unknown_deadlines(self) -> dict[str, datetime]:
        """Give a due date to every request that has none because its calendar was
        missing (`deadline_error` set), where `self.deadlines` now knows the year: an
        override file typed in from the official notice, or a newer `holidays`. Counted
        from the request's clock start, as at intake (receipt; verification where the
        clock waits for it). Returns request id -> the due date set.

        Idempotent, and safe beside another run or a verification: each write is a
        compare-and-set on "still unknown", so a request gets its due date, and its audit
        event, once."""
        computed: dict[str, datetime] = {}
        for request_id, regime, received_at, verified_at in self._unknown_deadlines():
            start = self.deadlines.clock_start(regime, received_at, verified_at)
            due, _ = self._due(regime, start)
            if due is None or start is None:
                continue  # still no calendar for it
            if self._set_due_once_known(request_id, regime, due, start):
                computed[request_id] = due
        return computed

    def _unknown_deadlines(self) -> list[tuple[str, Regime, datetime, datetime | None]]:
        """(id, regime, received, verified) of the requests whose due date is unknown."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(requests.c.id, requests.c.regime, requests.c.received_at,
                       requests.c.verified_at)
                .where(requests.c.due_at.is_(None), requests.c.deadline_error.is_not(None),
                       requests.c.regime.is_not(None))
                .order_by(requests.c.received_at, requests.c.id)
            ).all()
        return [
            (row.id, Regime(row.regime), _utc(row.received_at), _utc(row.verified_at))
            for row in rows
        ]

    def _set_due_once_known(
        self, request_id: str, regime: Regime, due: datetime, start: datetime
    ) -> bool:
        """Set a computed due date if the request's is still unknown; False if another
        writer got there first. `updated_at` is left alone: `stranded` reads it as the time
        of the last status change, and this is none."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(requests)
                .where(requests.c.id == request_id, requests.c.due_at.is_(None),
                       requests.c.deadline_error.is_not(None))
                .values(due_at=due, deadline_error=None)
            )
            if result.rowcount != 1:
                return False
            self._audit(
                conn, "request.deadline_computed", request_id,
                {"regime": regime.value, "clock_started_at": start.astimezone(UTC).isoformat(),
                 "due_at": due.astimezone(UTC).isoformat()},
            )
        return True

    def extend(
        self,
        request_id: str,
        reason: str,
        until: date | None = None,
        at: datetime | None = None,
    ) -> datetime:
        """Extend an open request's deadline to the end of `until` (a date in the regime's
        time zone; default: as far as the regime allows), noting that the subject was told
        at `at` (default: now). Returns the new due date, in UTC. Raises ExtensionRefused
        when the regime, the request or the dates do not allow it."""
        notice_at = (at or now()).astimezone(UTC)
        if not reason.strip():
            # The subject and the regulator are owed the reasons for a delay.
            raise ExtensionRefused("an extension needs a reason: the subject must be told why")
        with self.engine.begin() as conn:
            self._locked(conn, requests.c.id, request_id)
            row = conn.execute(select(requests).where(requests.c.id == request_id)).one()
            record = RequestRecord.from_row(row._mapping)
            new_due = self._extension_due(record, until, notice_at)
            previous = record.effective_due_at
            assert previous is not None  # checked by _extension_due
            conn.execute(
                update(requests)
                .where(requests.c.id == request_id)
                .values(
                    extended_due_at=new_due,
                    extension_notice_at=notice_at,
                    extension_reason=reason.strip(),
                    updated_at=now(),
                )
            )
            self._audit(
                conn, "request.extended", request_id,
                {"from": previous.isoformat(), "to": new_due.isoformat(),
                 "notice_at": notice_at.isoformat(), "reason": reason.strip()},
            )
        return new_due

    def _extension_due(
        self, record: RequestRecord, until: date | None, notice_at: datetime
    ) -> datetime:
        """The new due date of an extension, or ExtensionRefused saying why not."""
        if not record.status.is_open or record.regime is None:
            raise ExtensionRefused(
                f"request {record.id} is {record.status}: only an open request can be extended"
            )
        regime = record.regime

        def local(moment: datetime) -> date:
            return self.deadlines.local_date(regime, moment)

        start = self.deadlines.clock_start(regime, record.received_at, record.verified_at)
        if record.due_at is None or start is None:
            why = record.deadline_error or "its clock has not started (identity not verified)"
            raise ExtensionRefused(f"request {record.id} has no due date to extend: {why}")
        cap = self.deadlines.extension_cap(regime, start)
        if cap is None:
            promise = (
                "the privacy policy (9.2) promises a reply within 15 working days, with no "
                "extension" if regime is Regime.PIPL else "its period cannot be extended"
            )
            raise ExtensionRefused(
                f"{regime} allows no extension: {promise}; this request is due "
                f"{local(record.due_at)}"
            )
        if notice_at > record.due_at:
            raise ExtensionRefused(
                f"too late to extend: the notice must go out within the first period, which "
                f"ended {local(record.due_at)}; it is now {local(notice_at)}"
            )
        new_due = cap if until is None else self.deadlines.end_of_local_day(regime, until)
        if new_due > cap:
            raise ExtensionRefused(
                f"{until} is past what {regime} allows: at most until {local(cap)}"
            )
        current = record.effective_due_at
        assert current is not None
        if new_due <= current:
            raise ExtensionRefused(
                f"{local(new_due)} is not later than the current due date {local(current)}"
            )
        return new_due

    # -- steps ------------------------------------------------------------------------
    def steps(
        self, request_ids: Sequence[str] | None = None, *,
        actions: Iterable[StepAction] | None = None,
        statuses: Iterable[StepStatus] | None = None, details: bool = True,
    ) -> list[StepRecord]:
        """Steps of these requests (all: None), only of these actions and statuses if given
        (a check for failures reads the few failed rows, not the batch's every step).
        `details=False` leaves each step's details out (read as empty): a reader of
        statuses and counts skips decoding them, most of a batch's read."""
        columns = list(steps.c) if details else [
            *(c for c in steps.c if c.name != "details"), null().label("details")]
        query = select(*columns).order_by(steps.c.request_id, steps.c.system, steps.c.id)
        if request_ids is not None:
            query = query.where(steps.c.request_id.in_(list(request_ids)))
        if actions is not None:
            query = query.where(steps.c.action.in_(sorted(a.value for a in actions)))
        if statuses is not None:
            query = query.where(steps.c.status.in_(sorted(s.value for s in statuses)))
        with self.engine.connect() as conn:
            return [StepRecord.from_row(row._mapping) for row in conn.execute(query)]

    # -- partners ---------------------------------------------------------------------
    def partner_request_id(self, request_id: str, system: str, make_id: Any) -> str:
        """The id under which this request goes to this partner, made (by `make_id()`) and
        committed on first use: every retry, rerun or crash recovery sends the same one."""
        key = (partner_requests.c.request_id == request_id) & (
            partner_requests.c.system == system
        )
        with self.engine.begin() as conn:
            self._locked(conn, requests.c.id, request_id)
            found = conn.execute(
                select(partner_requests.c.subject_request_id).where(key)
            ).scalar_one_or_none()
            if found is not None:
                return str(found)
            srid = str(make_id())
            stamp = now()
            conn.execute(
                insert(partner_requests).values(
                    request_id=request_id, system=system, subject_request_id=srid,
                    status="created", created_at=stamp, updated_at=stamp,
                )
            )
            self._audit(conn, "partner.request_id", request_id, {"system": system})
        return srid

    def partner_request_ids(
        self, request_ids: Sequence[str], system: str, make_id: Callable[[], str]
    ) -> dict[str, str]:
        """`partner_request_id` for a batch, in one transaction: each request's id for this
        partner, those it lacks made (by `make_id()`) and committed together, with one
        audit entry naming them. An id once committed is never replaced, and two runs at
        once agree on one id per request: the requests' rows are locked (in id order, so
        two overlapping batches cannot deadlock) before the ids are read."""
        wanted = list(dict.fromkeys(request_ids))
        ordered = sorted(wanted)
        found: dict[str, str] = {}
        with self.engine.begin() as conn:
            locked: set[str] = set()
            for chunk in chunks(ordered):
                locked.update(conn.execute(
                    select(requests.c.id).where(requests.c.id.in_(chunk))
                    .order_by(requests.c.id).with_for_update()
                ).scalars())
            for rid in ordered:
                if rid not in locked:
                    raise UnknownRequest(f"no request {rid}")
            for chunk in chunks(ordered):
                found.update(conn.execute(
                    select(partner_requests.c.request_id, partner_requests.c.subject_request_id)
                    .where(partner_requests.c.system == system,
                           partner_requests.c.request_id.in_(chunk))
                ).tuples().all())
            minted = {rid: str(make_id()) for rid in ordered if rid not in found}
            if minted:
                stamp = now()
                conn.execute(insert(partner_requests), [
                    {"request_id": rid, "system": system, "subject_request_id": srid,
                     "status": PartnerStatus.CREATED.value, "created_at": stamp,
                     "updated_at": stamp}
                    for rid, srid in minted.items()
                ])
                single = next(iter(minted)) if len(minted) == 1 else None
                self._audit(conn, "partner.request_ids", single,
                            {"system": system, "requests": list(minted)})
                found.update(minted)
        return {rid: str(found[rid]) for rid in wanted}

    def update_partner(
        self, request_id: str, system: str, status: PartnerStatus | None = None,
        *, expect: frozenset[PartnerStatus] | None = None, **values: Any,
    ) -> bool:
        """Record what happened to a request handed to a partner. A change of `status` is a
        compare-and-set in one statement: it applies only from the states
        `PARTNER_TRANSITIONS` allows, so a write that lost a race (the POST's `submitted`
        after an early callback's `completed`) is a no-op, audited as such, and returns
        False; a later state is never overwritten by an earlier one. `expect` narrows the
        states it may come from further (a person's retry only from `blocked`)."""
        key = (partner_requests.c.request_id == request_id) & (
            partner_requests.c.system == system
        )
        if status is not None:
            allowed = PARTNER_TRANSITIONS[PartnerStatus(status)]
            sources = sorted(s.value for s in (allowed & expect if expect else allowed))
            key = key & partner_requests.c.status.in_(sources)
            values["status"] = PartnerStatus(status).value
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(partner_requests).where(key).values(updated_at=now(), **values)
            ).rowcount > 0
            detail = {"system": system, **{k: str(v) for k, v in values.items()}}
            if not changed:
                detail["lost"] = "the request had moved on"
            self._audit(conn, "partner.update", request_id, detail)
        return changed

    def update_partners(
        self, system: str, changes: Sequence[tuple[str, PartnerStatus, dict[str, Any]]]
    ) -> set[str]:
        """`update_partner` for several requests of one partner at once (request id, new
        status, other values): one transaction and one audit entry for them all, each
        change still its own compare-and-set against `PARTNER_TRANSITIONS`. Returns the
        requests whose change applied; the others had moved on (a callback came first),
        and their lost writes are on record as such."""
        if not changes:
            return set()
        applied: set[str] = set()
        audited: list[dict[str, Any]] = []
        stamp = now()
        with self.engine.begin() as conn:
            current = self._locked_partner_statuses(
                conn, system, sorted({request_id for request_id, _, _ in changes}))
            # Each change is checked against the status read under the lock (and against
            # an earlier change of the same request in this call); what applies is
            # written in one statement per shape of change, a request's changes merged.
            writes: dict[str, dict[str, Any]] = {}
            for request_id, status, values in sorted(changes, key=lambda c: c[0]):
                target = PartnerStatus(status)
                entry = {"request_id": request_id, "status": target.value,
                         **{k: str(v) for k, v in values.items()}}
                found = current.get(request_id)
                if found is not None and PartnerStatus(found) in PARTNER_TRANSITIONS[target]:
                    applied.add(request_id)
                    current[request_id] = target.value
                    writes[request_id] = {**writes.get(request_id, {}), **values,
                                          "status": target.value, "updated_at": stamp}
                else:
                    entry["lost"] = "the request had moved on"
                audited.append(entry)
            rows = [{"_request_id": rid, **{f"_{k}": v for k, v in w.items()}}
                    for rid, w in writes.items()]
            for shape in shapes(rows):
                columns = [k[1:] for k in shape[0] if k != "_request_id"]
                conn.execute(
                    update(partner_requests).where(
                        partner_requests.c.request_id == bindparam("_request_id"),
                        partner_requests.c.system == system,
                    ).values({c: bindparam(f"_{c}") for c in columns}),
                    shape,
                )
            single = changes[0][0] if len(changes) == 1 else None
            self._audit(conn, "partner.updates", single, {"system": system,
                                                          "updates": audited})
        return applied

    def _locked_partner_statuses(
        self, conn: Connection, system: str, request_ids: Sequence[str]
    ) -> dict[str, str]:
        """The status of each of these requests at one partner, their rows locked until the
        transaction ends, in id order: two transactions that lock some of the same rows
        lock them in the same order (PostgreSQL; SQLite's write transaction holds the
        database)."""
        found: dict[str, str] = {}
        for chunk in chunks(list(request_ids)):
            found.update(conn.execute(
                select(partner_requests.c.request_id, partner_requests.c.status)
                .where(partner_requests.c.system == system,
                       partner_requests.c.request_id.in_(chunk))
                .order_by(partner_requests.c.request_id).with_for_update()
            ).tuples().all())
        return found

    def partner_request_by_id(
        self, system: str, subject_request_id: str
    ) -> PartnerRequest | None:
        return self.partner_requests_by_id(system, [subject_request_id]).get(
            subject_request_id)

    def partner_requests_by_id(
        self, system: str, subject_request_ids: Sequence[str]
    ) -> dict[str, PartnerRequest]:
        """One partner's requests by the ids it knows them by (unknown ids left out)."""
        found: dict[str, PartnerRequest] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(dict.fromkeys(subject_request_ids))):
                for row in conn.execute(select(partner_requests).where(
                    partner_requests.c.system == system,
                    partner_requests.c.subject_request_id.in_(chunk),
                )):
                    record = PartnerRequest.from_row(row._mapping)
                    found[str(record.subject_request_id)] = record
        return found

    def partner_requests(
        self, request_ids: Sequence[str] | None = None,
        statuses: Iterable[PartnerStatus] | None = None,
    ) -> list[PartnerRequest]:
        query = select(partner_requests).order_by(
            partner_requests.c.created_at, partner_requests.c.request_id
        )
        if request_ids is not None:
            query = query.where(partner_requests.c.request_id.in_(list(request_ids)))
        if statuses is not None:
            query = query.where(partner_requests.c.status.in_(sorted(statuses)))
        with self.engine.connect() as conn:
            return [PartnerRequest.from_row(row._mapping) for row in conn.execute(query)]

    # -- audit ------------------------------------------------------------------------
    def audit(self, event_name: str, request_id: str | None, detail: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            self._audit(conn, event_name, request_id, detail)

    def _audit(
        self, conn: Connection, event_name: str, request_id: str | None, detail: dict[str, Any]
    ) -> None:
        """Append to the hash chain. The head row is locked for the transaction, so
        concurrent writers line up instead of forking the chain."""
        prev = conn.execute(
            select(audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
        ).scalar_one()
        at = now()
        digest = self._chain_hash(prev, at, request_id, event_name, detail)
        conn.execute(
            insert(audit_events).values(
                at=at, request_id=request_id, event=event_name, detail=detail,
                prev_hash=prev, hash=digest,
            )
        )
        conn.execute(update(audit_head).where(audit_head.c.id == 1).values(hash=digest))

    def _chain_hash(
        self, prev: str, at: datetime, request_id: str | None, event_name: str,
        detail: dict[str, Any],
    ) -> str:
        body = json.dumps(
            [prev, at.astimezone(UTC).isoformat(), request_id, event_name, detail],
            sort_keys=True, default=str,
        )
        # Keyed, so someone with write access to the database alone cannot re-chain edits.
        return keyed_digest(self.keyring.token_key, body)

    def audit_events(self, event_name: str) -> list[tuple[datetime, dict[str, Any]]]:
        """The audit trail's entries of one kind, oldest first: (when, detail)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(audit_events.c.at, audit_events.c.detail)
                                .where(audit_events.c.event == event_name)
                                .order_by(audit_events.c.id)).all()
        out = []
        for row in rows:
            at = _utc(row.at)
            assert at is not None
            detail = row.detail if isinstance(row.detail, dict) else json.loads(row.detail)
            out.append((at, dict(detail)))
        return out

    def verify_audit_chain(self) -> int | None:
        """The id of the first event that does not chain, or None when the chain is whole."""
        prev = GENESIS
        with self.engine.connect() as conn:
            for row in conn.execute(select(audit_events).order_by(audit_events.c.id)):
                at = _utc(row.at)
                assert at is not None
                expected = self._chain_hash(prev, at, row.request_id, row.event, row.detail)
                if row.prev_hash != prev or row.hash != expected:
                    return int(row.id)
                prev = row.hash
            head = conn.execute(select(audit_head.c.hash)).scalar_one()
            if head != prev:
                return -1
        return None

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(requests)).scalar_one())


def _status_changes(
    request_id: str, target: Status, reason: str | None, stamp: datetime
) -> dict[str, Any]:
    """The columns a move to `target` sets (`_id` names the row)."""
    changes: dict[str, Any] = {
        "_id": request_id, "status": target.value, "updated_at": stamp, "reason": reason,
    }
    if target in (Status.COMPLETED, Status.PARTIALLY_COMPLETED, Status.REFUSED):
        changes["completed_at"] = stamp
    elif target is Status.IN_PROGRESS:
        changes["completed_at"] = None  # a rerun: the clock runs again
    if target in (Status.COMPLETED, Status.REFUSED):
        # Closed: drop the identities and destroy the pseudonym key.
        changes["subject_enc"] = None
        changes["pseudonym_key_enc"] = None
    return changes
