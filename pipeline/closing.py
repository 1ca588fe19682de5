"""Closing requests: each one's final status from what its steps say, once nothing is
left running or waiting for a partner; the package or certificate is made first."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from dsrflow.ledger import StepRecord
from dsrflow.model import DELIVERABLE_KIND, Status, StepAction, StepStatus
from pipeline import deliverables
from pipeline.runtime import Runtime


@dataclass(frozen=True)
class Closed:
    statuses: dict[str, Status]
    # Requests the run did not bring home: closed other than completed, or waiting for a
    # partner while one of their systems failed or is blocked (a partner's pending answer
    # must not hide a database that was down until the partner replies days later).
    unfinished: list[str]

    def with_stopped(self, stopped: dict[str, Status], failed: Sequence[str] = ()) -> Closed:
        """These and the requests a gate stopped (refused, waiting, or failed because a
        look-up failed: those are unfinished too)."""
        return Closed({**self.statuses, **stopped}, [*self.unfinished, *failed])


def close_requests(rt: Runtime, request_ids: Sequence[str]) -> Closed:
    """Each request's final status from its steps: completed when every step succeeded
    (and verification found nothing left), partial when some did, failed when none did."""
    steps_by_request: dict[str, list[StepRecord]] = defaultdict(list)
    for step in rt.ledger.steps(request_ids, details=False):
        steps_by_request[step.request_id].append(step)
    final: dict[str, Status] = {}
    moves: dict[str, tuple[Status, str | None]] = {}
    troubled: list[str] = []
    unfinished = (StepStatus.FAILED, StepStatus.BLOCKED)
    for rid in request_ids:
        # What the systems did decides between partial and failed; a certificate issued for
        # an erasure that failed everywhere does not make it partial, nor do identities
        # learnt for systems that then failed. A deliverable or a look-up of identities
        # that failed does keep the request from completing.
        statuses = {s.status for s in steps_by_request[rid]
                    if s.kind != DELIVERABLE_KIND and s.action != StepAction.RESOLVE}
        failed = [s for s in steps_by_request[rid] if s.status in unfinished]
        if failed:
            troubled.append(rid)
        if StepStatus.PENDING_EXTERNAL in statuses:
            # Open until every partner has answered (no worker waits meanwhile); a failed
            # or blocked step shows in the report and closes the request as partial then.
            final[rid] = Status.IN_PROGRESS
            continue
        if not failed and StepStatus.RUNNING not in statuses:
            target, reason = Status.COMPLETED, None
            if not steps_by_request[rid]:
                reason = "no system holds data in the request's scope"
        elif StepStatus.SUCCEEDED in statuses:
            target = Status.PARTIALLY_COMPLETED
            reason = "; ".join(f"{s.system} {s.action}: {s.error}" for s in failed)
        else:
            target = Status.FAILED
            reason = "; ".join(f"{s.system} {s.action}: {s.error}" for s in failed)
        moves[rid] = (target, reason)
    # One transaction for the batch; one closed meanwhile (a callback) stays as it is.
    final.update(rt.ledger.transition_many(moves, expect=frozenset({Status.IN_PROGRESS})))
    seen = set(troubled)
    troubled += [rid for rid in moves if final[rid] is not Status.COMPLETED and rid not in seen]
    return Closed(final, troubled)


def close_finished(rt: Runtime, request_ids: Sequence[str]) -> dict[str, Status]:
    """Close the requests among these that have no step left waiting."""
    steps = rt.ledger.steps(list(dict.fromkeys(request_ids)))
    waiting = {
        s.request_id for s in steps
        if s.status in (StepStatus.PENDING_EXTERNAL, StepStatus.RUNNING)
    }
    records = rt.ledger.get_many(list(dict.fromkeys(request_ids)))
    open_ = {r.id for r in records if r.status is Status.IN_PROGRESS}
    ready = [rid for rid in dict.fromkeys(request_ids) if rid not in waiting and rid in open_]
    if not ready:
        return {}
    deliverables.produce(rt, ready, steps, records)
    return close_requests(rt, ready).statuses
