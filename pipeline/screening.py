"""The policy's gates, after the request's identities are known and before any system is
touched: a repeat of an earlier request (6.6.2) is allowed, flagged or refused as the
settings say. A refusal is a closed outcome with a reason the subject can be told.

Each gate decides once per request (the ledger keeps the decision; a rerun reads it back),
so a request flagged today is not refused tomorrow because the settings changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dsrflow.gates import Gate, GateDecision, RepeatDecision, repeat_of
from dsrflow.model import Status
from pipeline.runtime import Runtime


@dataclass(frozen=True)
class Screened:
    ready: list[str]  # go on to the systems
    stopped: dict[str, Status] = field(default_factory=dict)  # refused, or waiting


def screen(rt: Runtime, request_ids: Sequence[str]) -> Screened:
    """Run the gates over a batch of requests the run holds (status in_progress)."""
    records = rt.ledger.get_many(request_ids)
    history = rt.ledger.same_subject_requests([r.id for r in records])
    found: list[GateDecision] = []
    for record in records:
        assert record.type is not None  # a rejected ticket never reaches a run
        assert record.created_at is not None
        found.append(repeat_of(record.id, record.type, record.received_at, record.created_at,
                               history.get(record.id, []), rt.settings.repeats))
    decided = {d.request_id: d for d in rt.ledger.record_gate_decisions(found)}
    stopped: dict[str, Status] = {}
    for rid, decision in decided.items():
        if decision.gate is Gate.REPEAT and decision.decision == RepeatDecision.REFUSE:
            if rt.ledger.transition(rid, Status.REFUSED, decision.reason,
                                    expect=frozenset({Status.IN_PROGRESS})):
                stopped[rid] = Status.REFUSED
            else:
                stopped[rid] = rt.ledger.get(rid).status
    return Screened([r.id for r in records if r.id not in stopped], stopped)
