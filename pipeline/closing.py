"""Closing requests: each one's final status from what its steps say, once nothing is
left running or waiting for a partner; the package or certificate is made first."""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future
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
    for step in rt.ledger.steps(request_ids):
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
    waiting = {
        s.request_id
        for s in rt.ledger.steps(list(request_ids))
        if s.status in (StepStatus.PENDING_EXTERNAL, StepStatus.RUNNING)
    }
    ready = [
        rid for rid in dict.fromkeys(request_ids)
        if rid not in waiting and rt.ledger.get(rid).status is Status.IN_PROGRESS
    ]
    if not ready:
        return {}
    deliverables.produce(rt, ready)
    return close_requests(rt, ready).statuses


class GroupCloser:
    """Closes the requests partners' callbacks finish, batch-shaped: the callbacks that
    arrive while one close runs are closed together by the next (a group commit), so a
    partner answering thousands of requests at once costs a close per batch, not per
    request. Each caller waits for the close that took its request and gets its outcome;
    a close that fails is retried request by request, so one request's fault fails only
    its own callback."""

    def __init__(self, rt: Runtime, max_batch: int = 500) -> None:
        self._rt = rt
        self._max = max_batch
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dsrflow-closer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close what is queued, then stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def queued(self) -> int:
        """Requests waiting for the next close."""
        return self._queue.qsize()

    def close(self, request_id: str, timeout: float) -> Status | None:
        """Close the request if nothing of it is left waiting; its status then (None: left
        open). Raises what the close raised, or TimeoutError."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the closer is not running")
        waiting = _Waiting(request_id, Future())
        self._queue.put(waiting)
        return waiting.future.result(timeout)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            stopping = False
            while len(batch) < self._max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._close(batch)
            if stopping:
                return

    def _close(self, batch: list[_Waiting]) -> None:
        try:
            closed = close_finished(self._rt, [w.request_id for w in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
            else:
                for waiting in batch:
                    self._close([waiting])
            return
        for waiting in batch:
            waiting.future.set_result(closed.get(waiting.request_id))


@dataclass(frozen=True)
class _Waiting:
    request_id: str
    future: Future[Status | None]
