"""What the policy's gates decided, and the history they decide on: the ledger's side of
`dsrflow.gates`. Batch-shaped: one query finds every earlier request of a batch's subjects
(by keyed token), one transaction records the batch's decisions."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select, update

from dsrflow.crypto import Keyring
from dsrflow.gates import Earlier, Gate, GateDecision, RepeatDecision
from dsrflow.ledger.batches import chunks
from dsrflow.ledger.schema import gate_decisions, requests
from dsrflow.ledger.subjects import shared_tokens
from dsrflow.ledger.times import utc
from dsrflow.model import RequestType, Status

if TYPE_CHECKING:
    from sqlalchemy import Engine


class GuardianMissing(ValueError):
    """A guardian's verification for a request whose ticket named no guardian."""


class GatesMixin:
    """The gate operations of the ledger (`Ledger` mixes this in)."""

    engine: Engine
    keyring: Keyring

    def _audit(self, conn: Connection, event_name: str, request_id: str | None,
               detail: dict[str, Any]) -> None:
        raise NotImplementedError

    def _locked(self, conn: Connection, column: Any, request_id: str) -> Any:
        raise NotImplementedError

    def _transition(self, conn: Connection, request_id: str, current: Status, target: Status,
                    reason: str | None, values: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- guardians (policy 7.x) -------------------------------------------------------------
    def wait_for_guardian(self, request_id: str, reason: str, of_age: date | None) -> bool:
        """Park a request the run holds (in_progress) until a guardian is verified or, for
        a child, until `of_age` (kept encrypted with the identities: it says when the
        child was born). False if the request had moved on."""
        with self.engine.begin() as conn:
            current = Status(self._locked(conn, requests.c.status, request_id))
            if current is not Status.IN_PROGRESS:
                return current is Status.AWAITING_GUARDIAN
            blob = conn.execute(select(requests.c.subject_enc)
                                .where(requests.c.id == request_id)).scalar_one()
            values: dict[str, Any] = {}
            if blob is not None:
                secret = json.loads(self.keyring.decrypt(blob, request_id))
                secret["of_age_on"] = of_age.isoformat() if of_age else None
                values["subject_enc"] = self.keyring.encrypt(
                    json.dumps(secret).encode(), request_id)
            self._transition(conn, request_id, current, Status.AWAITING_GUARDIAN, reason,
                             values)
        return True

    def verify_guardian(self, request_id: str, method: str, verified_at: datetime) -> Status:
        """Record that the guardian the ticket named was verified (how, and when); a
        request waiting for it goes back to `verified`, for the next run to screen again.
        Returns the request's status."""
        verified_at = verified_at.astimezone(UTC)
        with self.engine.begin() as conn:
            current = Status(self._locked(conn, requests.c.status, request_id))
            relation = conn.execute(select(requests.c.guardian_relation)
                                    .where(requests.c.id == request_id)).scalar_one()
            if relation is None:
                raise GuardianMissing(
                    f"request {request_id} names no guardian: a parent or guardian files a "
                    "ticket of their own, with `guardian:` (docs/tickets.md)")
            if not current.is_open:
                raise GuardianMissing(f"request {request_id} is {current.value}")
            conn.execute(update(requests).where(requests.c.id == request_id).values(
                guardian_verification_method=method, guardian_verified_at=verified_at))
            self._audit(conn, "request.guardian_verified", request_id,
                        {"relation": relation, "method": method,
                         "verified_at": verified_at.isoformat()})
            if current is Status.AWAITING_GUARDIAN:
                self._transition(conn, request_id, current, Status.VERIFIED, None, {})
                return Status.VERIFIED
        return current

    def came_of_age(self, today: date) -> list[str]:
        """Requests waiting for a guardian only because the subject was a child, who is of
        age by `today`: back to `verified` (the next run screens them again, on the
        day's birth date). Oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(requests.c.id, requests.c.subject_enc)
                .where(requests.c.status == Status.AWAITING_GUARDIAN.value,
                       requests.c.guardian_relation.is_(None))
                .order_by(requests.c.received_at, requests.c.id)
            ).all()
        due = []
        for row in rows:
            if row.subject_enc is None:
                continue
            secret = json.loads(self.keyring.decrypt(row.subject_enc, row.id))
            when = secret.get("of_age_on")
            if when is not None and date.fromisoformat(when) <= today:
                due.append(row.id)
        moved = []
        for rid in due:
            with self.engine.begin() as conn:
                current = Status(self._locked(conn, requests.c.status, rid))
                if current is not Status.AWAITING_GUARDIAN:
                    continue  # a guardian was verified meanwhile, or a person refused it
                self._transition(conn, rid, current, Status.VERIFIED, None, {})
                self._audit(conn, "request.came_of_age", rid, {"on": today.isoformat()})
                moved.append(rid)
        return moved

    def same_subject_requests(self, request_ids: Sequence[str]) -> dict[str, list[Earlier]]:
        """Per request, the other requests that share an account-grade identity token with
        it (the ticket's identities and those learnt from its rows), whatever their type,
        age or status: `dsrflow.gates` decides which of them count."""
        mine, theirs, joined = shared_tokens()
        found: dict[str, dict[str, Earlier]] = defaultdict(dict)
        with self.engine.connect() as conn:
            for chunk in chunks(list(dict.fromkeys(request_ids))):
                rows = conn.execute(
                    select(mine.c.request_id.label("rid"), requests.c.id, requests.c.ticket_id,
                           requests.c.type, requests.c.status, requests.c.received_at,
                           requests.c.created_at)
                    .select_from(joined)
                    .join(requests, requests.c.id == theirs.c.request_id)
                    .where(mine.c.request_id.in_(chunk),
                           theirs.c.request_id != mine.c.request_id,
                           requests.c.type.is_not(None))
                    .distinct()
                )
                for row in rows:
                    received, created = utc(row.received_at), utc(row.created_at)
                    assert received is not None and created is not None
                    found[row.rid][row.id] = Earlier(
                        row.id, row.ticket_id, RequestType(row.type), Status(row.status),
                        received, created,
                    )
        return {rid: list(found[rid].values()) for rid in request_ids}

    def record_gate_decisions(self, decisions: Sequence[GateDecision]) -> list[GateDecision]:
        """Record each decision unless its request already has one at that gate (a rerun
        decides nothing again: the first decision stands). Returns the decisions that are
        on record now, the earlier ones where they exist. One transaction, one audit entry
        per new decision."""
        if not decisions:
            return []
        stamp = datetime.now(UTC)
        with self.engine.begin() as conn:
            existing = self._gate_rows(conn, [d.request_id for d in decisions])
            new = [d for d in decisions if (d.request_id, d.gate) not in existing]
            if new:
                conn.execute(insert(gate_decisions), [
                    {"request_id": d.request_id, "gate": d.gate.value, "decision": d.decision,
                     "reason": d.reason, "related_request_id": d.related_request_id,
                     "decided_at": stamp}
                    for d in new
                ])
                for d in new:
                    if d.decision == RepeatDecision.NONE:
                        continue  # a check that found nothing is on record, not an event
                    self._audit(conn, "request.gate", d.request_id, {
                        "gate": d.gate.value, "decision": d.decision,
                        "related_request_id": d.related_request_id, "reason": d.reason,
                    })
        return [existing.get((d.request_id, d.gate), d) for d in decisions]

    def gate_decisions(
        self, request_ids: Sequence[str] | None = None
    ) -> dict[str, dict[Gate, GateDecision]]:
        """Per request, what each gate decided."""
        with self.engine.connect() as conn:
            rows = self._gate_rows(conn, request_ids)
        out: dict[str, dict[Gate, GateDecision]] = defaultdict(dict)
        for (rid, gate), decision in rows.items():
            out[rid][gate] = decision
        return dict(out)

    @staticmethod
    def _gate_rows(
        conn: Connection, request_ids: Sequence[str] | None
    ) -> dict[tuple[str, Gate], GateDecision]:
        query = select(gate_decisions)
        batches: list[list[str] | None] = (
            [None] if request_ids is None else list(chunks(list(dict.fromkeys(request_ids))))
        )
        out: dict[tuple[str, Gate], GateDecision] = {}
        for chunk in batches:
            q = query if chunk is None else query.where(gate_decisions.c.request_id.in_(chunk))
            for row in conn.execute(q):
                gate = Gate(row.gate)
                out[(row.request_id, gate)] = GateDecision(
                    row.request_id, gate, row.decision, row.reason, row.related_request_id
                )
        return out
