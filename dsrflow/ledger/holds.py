"""Legal holds in the ledger: placing and releasing them, finding the ones a batch of
requests meets (by keyed token, one query per batch), keeping the parts of erasures they
held back, and re-queuing those parts as follow-up requests once no hold keeps them.

A hold names its subject through a request; every request sharing an account-grade
identity token with that one is the same subject's, as for repeats."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select, update

from dsrflow.crypto import Keyring
from dsrflow.holds import HoldReason, LegalHold, end_of_day
from dsrflow.identities import ACCOUNT_GRADE
from dsrflow.ledger.batches import chunks
from dsrflow.ledger.schema import held_parts, identity_tokens, legal_holds, requests
from dsrflow.ledger.subjects import shared_tokens
from dsrflow.ledger.times import utc
from dsrflow.model import Regime, Status

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from dsrflow.deadlines import Deadlines


class HoldRefused(ValueError):
    """A hold that cannot be placed or released as asked; the message says why."""


# The longest a follow-up's ticket id keeps of the original's (ticket ids are at most 128).
_TICKET_KEEP = 100


class HoldsMixin:
    """The legal-hold operations of the ledger (`Ledger` mixes this in)."""

    engine: Engine
    deadlines: Deadlines
    keyring: Keyring

    def _audit(self, conn: Connection, event_name: str, request_id: str | None,
               detail: dict[str, Any]) -> None:
        raise NotImplementedError

    def _due(self, regime: Regime, start: datetime | None) -> tuple[datetime | None, str | None]:
        raise NotImplementedError

    # -- placing and releasing ---------------------------------------------------------------
    def add_hold(
        self, request_id: str, reason: HoldReason, citation: str, until: date,
        approved_by: str, categories: Iterable[str] | None = None,
        systems: Iterable[str] | None = None, at: datetime | None = None,
    ) -> LegalHold:
        """Hold the data of the subject of `request_id` (any request of theirs, open or
        closed): in `categories` and `systems` (None: all), until the end of `until`."""
        at = (at or datetime.now(UTC)).astimezone(UTC)
        if not citation.strip() or not approved_by.strip():
            raise HoldRefused("a hold needs a citation and who approved it")
        if end_of_day(until) < at:
            raise HoldRefused(f"{until} has passed: a hold ends in the future")
        cats = sorted(set(categories)) if categories else None
        syss = sorted(set(systems)) if systems else None
        hold = LegalHold(
            id=str(uuid.uuid4()), request_id=request_id, reason=HoldReason(reason),
            citation=citation.strip(), until=end_of_day(until), approved_by=approved_by.strip(),
            categories=frozenset(cats) if cats else None,
            systems=frozenset(syss) if syss else None, created_at=at,
        )
        with self.engine.begin() as conn:
            found = conn.execute(select(requests.c.status).where(requests.c.id == request_id)
                                 ).scalar_one_or_none()
            tokens = conn.execute(select(identity_tokens.c.token).where(
                identity_tokens.c.request_id == request_id,
                identity_tokens.c.type.in_(sorted(t.value for t in ACCOUNT_GRADE)))).first()
            if found is None or found == Status.REJECTED.value or tokens is None:
                raise HoldRefused(f"request {request_id} names no subject (no such request, "
                                  "a rejected ticket, or no account identity)")
            conn.execute(insert(legal_holds).values(
                id=hold.id, request_id=request_id, reason=hold.reason.value,
                citation=hold.citation, categories=cats, systems=syss, until=hold.until,
                approved_by=hold.approved_by, created_at=at,
            ))
            self._audit(conn, "hold.added", request_id, {
                "hold": hold.id, "reason": hold.reason.value, "citation": hold.citation,
                "until": hold.until.isoformat(), "approved_by": hold.approved_by,
                "categories": cats, "systems": syss,
            })
        return hold

    def release_hold(
        self, hold_id: str, by: str, reason: str, at: datetime | None = None
    ) -> LegalHold:
        """End a hold before its date. What it alone kept is re-queued by
        `requeue_released`."""
        at = (at or datetime.now(UTC)).astimezone(UTC)
        if not by.strip() or not reason.strip():
            raise HoldRefused("a release needs who released it and why")
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(legal_holds)
                .where(legal_holds.c.id == hold_id, legal_holds.c.released_at.is_(None))
                .values(released_at=at, released_by=by.strip(), release_reason=reason.strip())
            ).rowcount
            if not changed:
                raise HoldRefused(f"no hold {hold_id} in force")
            subject = conn.execute(select(legal_holds.c.request_id)
                                   .where(legal_holds.c.id == hold_id)).scalar_one()
            self._audit(conn, "hold.released", subject, {
                "hold": hold_id, "by": by.strip(), "reason": reason.strip()})
        return self.hold(hold_id)

    def expire_holds(self, at: datetime | None = None) -> list[LegalHold]:
        """Mark the holds whose end date has passed released (by `expiry`), once each."""
        at = (at or datetime.now(UTC)).astimezone(UTC)
        with self.engine.begin() as conn:
            ids = list(conn.execute(
                select(legal_holds.c.id, legal_holds.c.request_id)
                .where(legal_holds.c.released_at.is_(None), legal_holds.c.until < at)
                .with_for_update()
            ).tuples())
            if not ids:
                return []
            conn.execute(
                update(legal_holds).where(legal_holds.c.id.in_([i for i, _ in ids]),
                                          legal_holds.c.released_at.is_(None))
                .values(released_at=at, released_by="expiry",
                        release_reason="its end date passed")
            )
            for hold_id, subject in ids:
                self._audit(conn, "hold.expired", subject, {"hold": hold_id})
        return [self.hold(i) for i, _ in ids]

    # -- reading -----------------------------------------------------------------------------
    def hold(self, hold_id: str) -> LegalHold:
        with self.engine.connect() as conn:
            row = conn.execute(select(legal_holds).where(legal_holds.c.id == hold_id)
                               ).one_or_none()
        if row is None:
            raise HoldRefused(f"no hold {hold_id}")
        return _hold(row._mapping)

    def holds(self) -> list[LegalHold]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(legal_holds).order_by(legal_holds.c.created_at))
            return [_hold(r._mapping) for r in rows]

    def holds_for(
        self, request_ids: Sequence[str], at: datetime | None = None
    ) -> dict[str, list[LegalHold]]:
        """Per request, the holds in force at `at` (default: now) on its subject."""
        at = (at or datetime.now(UTC)).astimezone(UTC)
        mine, theirs, joined = shared_tokens()
        found: dict[str, dict[str, LegalHold]] = defaultdict(dict)
        with self.engine.connect() as conn:
            for chunk in chunks(list(dict.fromkeys(request_ids))):
                rows = conn.execute(
                    select(mine.c.request_id.label("rid"), legal_holds)
                    .select_from(joined)
                    .join(legal_holds, legal_holds.c.request_id == theirs.c.request_id)
                    .where(mine.c.request_id.in_(chunk),
                           legal_holds.c.released_at.is_(None), legal_holds.c.until >= at)
                )
                for row in rows:
                    hold = _hold(row._mapping)
                    found[row.rid][hold.id] = hold
        return {rid: sorted(found[rid].values(), key=lambda h: h.created_at)
                for rid in request_ids if found.get(rid)}

    def held_account_tokens(
        self, system: str, category: str, at: datetime | None = None
    ) -> tuple[set[str], list[str]]:
        """For a sweep of `category` in `system`: the keyed tokens of the account ids (user
        id identities) of every subject a hold in force there covers, found through every
        request of theirs; and the holds whose subject has no account id on record (their
        request was never resolved), which a sweep cannot honour row by row."""
        found, blind = self.held_tokens(system, category, at, ("user_id",))
        return {token for _, token in found}, blind

    def held_tokens(
        self, system: str, category: str, at: datetime | None = None,
        types: Sequence[str] = ("user_id",),
    ) -> tuple[set[tuple[str, str]], list[str]]:
        """(type, keyed token) of the identities of `types` of every subject a hold in
        force on `category` in `system` covers, through every request of theirs; and the
        holds none of whose subject's identities of those types is on record."""
        at = (at or datetime.now(UTC)).astimezone(UTC)
        holds = [h for h in self.holds() if h.active(at) and h.covers_system(system)
                 and (h.categories is None or category in h.categories)]
        if not holds:
            return set(), []
        mine, theirs, joined = shared_tokens()
        tokens: set[tuple[str, str]] = set()
        blind: list[str] = []
        with self.engine.connect() as conn:
            for hold in holds:
                same = (select(theirs.c.request_id).select_from(joined)
                        .where(mine.c.request_id == hold.request_id))
                found = set(conn.execute(
                    select(identity_tokens.c.type, identity_tokens.c.token).where(
                        identity_tokens.c.type.in_(list(types)),
                        identity_tokens.c.request_id.in_(same))).tuples())
                if not found:
                    blind.append(hold.id)
                tokens |= found
        return tokens, blind

    # -- what holds kept back ----------------------------------------------------------------
    def keep_held_parts(self, parts: Sequence[tuple[str, str, Sequence[str]]]) -> None:
        """Record (request, system, hold ids) parts that holds kept back, and keep each
        request's identities (encrypted) past its close, to finish them on release. A
        part already on record is left as it is. One transaction."""
        if not parts:
            return
        stamp = datetime.now(UTC)
        ids = sorted({rid for rid, _, _ in parts})
        with self.engine.begin() as conn:
            known = set()
            for chunk in chunks(ids):
                known |= set(conn.execute(
                    select(held_parts.c.request_id, held_parts.c.system)
                    .where(held_parts.c.request_id.in_(chunk),
                           held_parts.c.requeued_request_id.is_(None))).tuples())
            new = [p for p in parts if (p[0], p[1]) not in known]
            if not new:
                return
            conn.execute(insert(held_parts), [
                {"request_id": rid, "system": system, "hold_ids": sorted(hold_ids),
                 "created_at": stamp}
                for rid, system, hold_ids in new
            ])
            for chunk in chunks(ids):
                conn.execute(
                    update(requests)
                    .where(requests.c.id.in_(chunk), requests.c.held_subject_enc.is_(None))
                    .values(held_subject_enc=requests.c.subject_enc)
                )
            for rid, system, hold_ids in new:
                self._audit(conn, "hold.kept", rid, {"system": system,
                                                     "holds": sorted(hold_ids)})

    def held_parts(self, request_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        query = select(held_parts).order_by(held_parts.c.request_id, held_parts.c.system)
        if request_ids is not None:
            query = query.where(held_parts.c.request_id.in_(list(request_ids)))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def requeue_released(self, at: datetime | None = None) -> list[str]:
        """Follow-up requests for the held parts no hold keeps any more (each part's own
        holds released or expired): one per request, of the same type and scope, going to
        those systems only, verified (the subject's identity was), due as the regime
        counts from now. Returns the new request ids."""
        at = (at or datetime.now(UTC)).astimezone(UTC)
        with self.engine.begin() as conn:
            waiting = conn.execute(
                select(held_parts).where(held_parts.c.requeued_request_id.is_(None))
                .with_for_update()
            ).all()
            if not waiting:
                return []
            hold_ids = sorted({h for row in waiting for h in row.hold_ids})
            live = set(conn.execute(select(legal_holds.c.id).where(
                legal_holds.c.id.in_(hold_ids), legal_holds.c.released_at.is_(None),
                legal_holds.c.until >= at)).scalars())
            free: dict[str, list[str]] = defaultdict(list)
            for row in waiting:
                if not set(row.hold_ids) & live:
                    free[row.request_id].append(row.system)
            created = []
            for rid, systems in sorted(free.items()):
                new_id = self._follow_up(conn, rid, sorted(systems), at)
                if new_id is None:
                    continue
                conn.execute(
                    update(held_parts).where(held_parts.c.request_id == rid,
                                             held_parts.c.system.in_(systems),
                                             held_parts.c.requeued_request_id.is_(None))
                    .values(requeued_request_id=new_id, requeued_at=at)
                )
                created.append(new_id)
                still = conn.execute(select(held_parts.c.system).where(
                    held_parts.c.request_id == rid,
                    held_parts.c.requeued_request_id.is_(None))).first()
                if still is None:  # nothing of it is held any more: its identities go
                    conn.execute(update(requests).where(requests.c.id == rid)
                                 .values(held_subject_enc=None))
        return created

    def _follow_up(
        self, conn: Connection, original_id: str, systems: list[str], at: datetime
    ) -> str | None:
        row = conn.execute(select(requests).where(requests.c.id == original_id)
                           .with_for_update()).one()
        blob = row.held_subject_enc or row.subject_enc
        if blob is None or row.regime is None:
            return None  # nothing to look for with: said in the audit trail below
        regime = Regime(row.regime)
        new_id = str(uuid.uuid4())
        due, error = self._due(regime, self.deadlines.clock_start(regime, at, at))
        ticket = f"{(row.ticket_id or original_id)[:_TICKET_KEEP]}.held-{new_id[:8]}"
        secret = self.keyring.decrypt(blob, original_id)
        conn.execute(insert(requests).values(
            id=new_id, ticket_id=ticket, type=row.type, regime=row.regime,
            channel="legal-hold-release", scope=row.scope, status=Status.VERIFIED.value,
            verification_method=row.verification_method, received_at=at, verified_at=at,
            due_at=due, deadline_error=error, subject_enc=self.keyring.encrypt(secret, new_id),
            datamap_version=row.datamap_version, policy_version=row.policy_version,
            follows_request_id=original_id, systems=systems,
            guardian_relation=row.guardian_relation,
            guardian_verification_method=row.guardian_verification_method,
            guardian_verified_at=row.guardian_verified_at,
            created_at=at, updated_at=at,
        ))
        tokens = conn.execute(select(identity_tokens.c.type, identity_tokens.c.token).where(
            identity_tokens.c.request_id == original_id)).tuples().all()
        if tokens:
            conn.execute(insert(identity_tokens), [
                {"request_id": new_id, "type": t, "token": v} for t, v in tokens])
        self._audit(conn, "request.received", new_id, {
            "ticket_id": ticket, "type": row.type, "status": Status.VERIFIED.value,
            "follows": original_id, "systems": systems, "why": "legal hold released"})
        return new_id


def _hold(row: Any) -> LegalHold:
    until, created = utc(row["until"]), utc(row["created_at"])
    assert until is not None and created is not None
    return LegalHold(
        id=row["id"], request_id=row["request_id"], reason=HoldReason(row["reason"]),
        citation=row["citation"], until=until, approved_by=row["approved_by"],
        categories=frozenset(row["categories"]) if row["categories"] else None,
        systems=frozenset(row["systems"]) if row["systems"] else None,
        created_at=created, released_at=utc(row["released_at"]),
        released_by=row["released_by"], release_reason=row["release_reason"],
    )

