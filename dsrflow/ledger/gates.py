"""What the policy's gates decided, and the history they decide on: the ledger's side of
`dsrflow.gates`. Batch-shaped: one query finds every earlier request of a batch's subjects
(by keyed token), one transaction records the batch's decisions."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, insert, select
from sqlalchemy.orm import aliased

from dsrflow.gates import Earlier, Gate, GateDecision, RepeatDecision
from dsrflow.identities import ACCOUNT_GRADE
from dsrflow.ledger.batches import chunks
from dsrflow.ledger.schema import gate_decisions, identity_tokens, requests
from dsrflow.ledger.times import utc
from dsrflow.model import RequestType, Status

if TYPE_CHECKING:
    from sqlalchemy import Engine


class GatesMixin:
    """The gate operations of the ledger (`Ledger` mixes this in)."""

    engine: Engine

    def _audit(self, conn: Connection, event_name: str, request_id: str | None,
               detail: dict[str, Any]) -> None:
        raise NotImplementedError

    def same_subject_requests(self, request_ids: Sequence[str]) -> dict[str, list[Earlier]]:
        """Per request, the other requests that share an account-grade identity token with
        it (the ticket's identities and those learnt from its rows), whatever their type,
        age or status: `dsrflow.gates` decides which of them count."""
        mine = aliased(identity_tokens)
        theirs = aliased(identity_tokens)
        grades = sorted(t.value for t in ACCOUNT_GRADE)
        found: dict[str, dict[str, Earlier]] = defaultdict(dict)
        with self.engine.connect() as conn:
            for chunk in chunks(list(dict.fromkeys(request_ids))):
                rows = conn.execute(
                    select(mine.c.request_id.label("rid"), requests.c.id, requests.c.ticket_id,
                           requests.c.type, requests.c.status, requests.c.received_at,
                           requests.c.created_at)
                    .select_from(mine)
                    .join(theirs, and_(theirs.c.token == mine.c.token,
                                       theirs.c.type == mine.c.type,
                                       theirs.c.request_id != mine.c.request_id))
                    .join(requests, requests.c.id == theirs.c.request_id)
                    .where(mine.c.request_id.in_(chunk), mine.c.type.in_(grades),
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
