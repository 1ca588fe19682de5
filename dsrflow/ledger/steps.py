"""Recording steps, batch-shaped: one row per request × system × action, written for a
whole batch of one system in one transaction, with one audit entry.

A system's work runs for a batch in one call; what it reports is written the same way:
the batch's rows are read and locked in one statement, each row's new values worked out
here (what a rerun keeps of an earlier success, how an erasure's counts add up), and
written back in one statement per shape of change, so the cost per request does not grow
with the batch and the ledger does not serialize a run into one transaction per request.
The audit chain takes one entry for the batch, which lists every request's outcome.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, insert, select, update

from dsrflow.ledger.batches import chunks, shapes
from dsrflow.ledger.counts import add_up, add_up_parts, at_least, at_least_parts
from dsrflow.ledger.schema import steps
from dsrflow.model import (
    COUNTED_KEY,
    PREPARED_KEY,
    RUN_KEY,
    SEARCHED_KEY,
    STEP_TRANSITIONS,
    StepAction,
    StepStatus,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

COUNT_COLUMNS = ("found", "deleted", "anonymized", "retained", "remaining")
# What an erasure tells the ledger before its outcome (`StepsMixin.prepare_steps`): all it
# is about to commit at once (SQL's transaction, an object store's planned deletions), or
# what it has made durable so far, piece by piece (log files rewritten one at a time).
PLAN = "plan"
PROGRESS = "progress"


@dataclass(frozen=True)
class StepCounts:
    found: int = 0
    deleted: int = 0
    anonymized: int = 0
    retained: int = 0
    remaining: int | None = None


@dataclass(frozen=True)
class StepWrite:
    """One request's progress or outcome in a step."""

    request_id: str
    status: StepStatus
    counts: StepCounts | None = None
    error: str | None = None
    details: dict[str, Any] | None = None


class StepsMixin:
    """The step operations of the ledger (`Ledger` mixes this in)."""

    engine: Engine

    def _audit(self, conn: Connection, event_name: str, request_id: str | None,
               detail: dict[str, Any]) -> None:
        raise NotImplementedError

    def _now(self) -> datetime:
        raise NotImplementedError

    def record_step(
        self,
        request_id: str,
        system: str,
        kind: str,
        action: StepAction,
        status: StepStatus,
        counts: StepCounts | None = None,
        error: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record one request's step: `record_steps` for a batch of one."""
        self.record_steps(system, kind, action,
                          [StepWrite(request_id, status, counts, error, details)])

    def record_steps(
        self, system: str, kind: str, action: StepAction, writes: Sequence[StepWrite]
    ) -> None:
        """Record a batch's progress or outcomes in one system's step (one row per request
        × system × action), in one transaction.

        A step that had succeeded keeps the record of its success through a rerun that
        finds nothing more to do there (a partner that had already answered): its finish
        time, what it recorded (a partner's confirmation, the run that did the work) and
        its counts stay, so a certificate issued again says when that system really
        finished. Whatever the rerun does report (counts, parts, a new certificate file) is
        recorded as the step's outcome, at the rerun's time; an erasure's counts add up
        over its attempts (`dsrflow.ledger.counts`)."""
        if not writes:
            return
        stamp = self._now()
        with self.engine.begin() as conn:
            found = self._locked_steps(conn, system, action, [w.request_id for w in writes])
            inserts: list[dict[str, Any]] = []
            updates: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
            audited: list[dict[str, Any]] = []
            for write in writes:
                row = found.get(write.request_id)
                if row is not None and row["status"] not in STEP_TRANSITIONS[write.status]:
                    # Lost a race (a partner's answer came first): on record, not applied.
                    audited.append({"request_id": write.request_id,
                                    "status": write.status.value,
                                    "lost": f"the step is {row['status']}"})
                    continue
                values, counts, kept = _step_values(row, write, kind, action, stamp)
                if row is None:
                    inserts.append({"request_id": write.request_id, "system": system,
                                    "action": action, **values})
                else:
                    updates[frozenset(values)].append(
                        {"_id": row["id"], **{f"_{k}": v for k, v in values.items()}})
                audited.append({
                    "request_id": write.request_id, "status": write.status.value,
                    "error": write.error, "counts": counts.__dict__ if counts else None,
                    **({"kept": "the earlier success"} if kept else {}),
                })
            if inserts:
                for shape in shapes(inserts):
                    conn.execute(insert(steps), shape)
            for columns, rows in updates.items():
                conn.execute(
                    update(steps).where(steps.c.id == bindparam("_id"))
                    .values({c: bindparam(f"_{c}") for c in columns}),
                    rows,
                )
            statuses = {w.status.value for w in writes}
            name = f"step.{statuses.pop()}" if len(statuses) == 1 else "step.recorded"
            single = writes[0].request_id if len(writes) == 1 else None
            self._audit(conn, name, single, {"system": system, "action": action,
                                             "steps": audited})

    def prepare_steps(
        self, system: str, action: StepAction,
        prepared: Mapping[str, tuple[StepCounts, dict[str, Any]]], *, mode: str = PLAN,
        pieces: Sequence[str] = (),
    ) -> None:
        """What an erasure is about to commit (`PLAN`) or has made durable so far
        (`PROGRESS`), per request (counts and parts), kept in its running step until the
        outcome is recorded. A run killed in between leaves it: a plan is read against
        the rerun's counts (`dsrflow.ledger.counts.at_least`: the rerun changes only what
        the plan meant to), progress is added to the step when the rerun starts (what the
        rerun changes is what the interrupted attempt had not). Figures of the same attempt
        and mode are kept where larger. `pieces` name what a progress report covers (a
        log file's rewrite): once this commits they are counted (`counted_pieces`), which
        is how a rerun tells a report that arrived from one that did not. One transaction
        for the batch; one audit entry."""
        if not prepared:
            return
        with self.engine.begin() as conn:
            rows = self._locked_steps(conn, system, action, list(prepared))
            updates = []
            for rid, (counts, parts) in prepared.items():
                row = rows.get(rid)
                if row is None or row["status"] != StepStatus.RUNNING.value:
                    continue
                details = dict(row["details"] or {})
                earlier = details.get(PREPARED_KEY)
                if not earlier or earlier.get("mode", PLAN) != mode:
                    earlier = {"counts": {}, "parts": {}}
                details[PREPARED_KEY] = {
                    "mode": mode,
                    "counts": at_least(earlier["counts"], counts.__dict__),
                    "parts": at_least_parts(earlier["parts"], parts),
                }
                if covered := sorted({*earlier.get("pieces", []), *pieces}):
                    details[PREPARED_KEY]["pieces"] = covered
                updates.append({"_id": row["id"], "_details": details})
            if updates:
                conn.execute(
                    update(steps).where(steps.c.id == bindparam("_id"))
                    .values(details=bindparam("_details")),
                    updates,
                )
                self._audit(conn, "step.prepared", None, {
                    "system": system, "action": action,
                    "requests": [rid for rid in prepared if rid in rows],
                })

    def counted_pieces(
        self, system: str, action: StepAction, request_ids: Sequence[str]
    ) -> frozenset[str]:
        """The pieces (`prepare_steps`' `pieces`) whose progress these requests' steps have
        counted, in any attempt: one read for the batch."""
        counted: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in chunks(list(dict.fromkeys(request_ids))):
                for details in conn.execute(
                    select(steps.c.details).where(
                        steps.c.request_id.in_(chunk), steps.c.system == system,
                        steps.c.action == action)
                ).scalars():
                    details = details or {}
                    counted.update(details.get(COUNTED_KEY, []))
                    counted.update((details.get(PREPARED_KEY) or {}).get("pieces", []))
        return frozenset(counted)

    def settle_progress(self, system: str, action: StepAction, request_ids: Sequence[str]) -> None:
        """Add what an erasure call reported as done (`PROGRESS`) to its steps, for a call
        that raised: what it changed before it stopped stays counted whatever the retry
        reports. One transaction for the batch; one audit entry."""
        with self.engine.begin() as conn:
            rows = self._locked_steps(conn, system, action, request_ids)
            updates, settled = [], []
            for rid, row in rows.items():
                if (folded := _fold_progress(row)) is not None:
                    counts, details = folded
                    updates.append({"_id": row["id"], "_details": details,
                                    **{f"_{c}": getattr(counts, c) for c in COUNT_COLUMNS}})
                    settled.append(rid)
            if updates:
                conn.execute(
                    update(steps).where(steps.c.id == bindparam("_id"))
                    .values(details=bindparam("_details"),
                            **{c: bindparam(f"_{c}") for c in COUNT_COLUMNS}),
                    updates,
                )
                self._audit(conn, "step.progress_settled", None, {
                    "system": system, "action": action,
                    "requests": sorted(settled),
                })

    def _locked_steps(
        self, conn: Connection, system: str, action: str, request_ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """The step rows of these requests in one system's action, locked until the
        transaction ends (PostgreSQL; SQLite's write transaction holds the database)."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunks(list(dict.fromkeys(request_ids))):
            for row in conn.execute(
                select(steps).where(steps.c.request_id.in_(chunk), steps.c.system == system,
                                    steps.c.action == action).with_for_update()
            ):
                found[row.request_id] = dict(row._mapping)
        return found


def _step_values(
    row: Mapping[str, Any] | None, write: StepWrite, kind: str, action: str, stamp: datetime,
) -> tuple[dict[str, Any], StepCounts | None, bool]:
    """The columns one write sets, the counts it records, and whether it kept an earlier
    success as it was."""
    status, counts, details = write.status, write.counts, write.details
    succeeded = row is not None and _had_succeeded(row["status"], row["finished_at"])
    kept = (status is StepStatus.SUCCEEDED and succeeded
            and _reports_no_work(counts, write.error, details))
    values: dict[str, Any] = {"kind": kind, "status": status.value, "error": write.error}
    adds_up = action == StepAction.ERASE and row is not None
    if status is StepStatus.RUNNING:
        values.update(started_at=stamp, attempts=(row["attempts"] if row else 0) + 1)
        if adds_up and row is not None and (folded := _fold_progress(row)) is not None:
            # An earlier attempt was stopped after changing data it had reported as it
            # went: those changes are facts, added before this attempt starts.
            counts, details = folded
            values.update(details=details, **{c: getattr(counts, c) for c in COUNT_COLUMNS})
        if not succeeded:
            # A success's finish time and details wait for what the rerun reports:
            # `_had_succeeded` reads them as the mark of a rerun over a success. An
            # erasure's parts stay: what earlier attempts did is added to.
            values.update(finished_at=None)
            if not adds_up:
                values.update(details=None)
    elif not kept:
        if adds_up:
            assert row is not None
            prepared = (row["details"] or {}).get(PREPARED_KEY)
            # This attempt's own progress is in what it reports now; an interrupted
            # attempt's plan is read against it.
            if prepared and counts is not None and prepared.get("mode") != PROGRESS:
                # An attempt was killed after preparing: the rerun and it, as one.
                counts = StepCounts(**at_least(prepared["counts"], counts.__dict__))
                details = at_least_parts(prepared["parts"], details)
            details = add_up_parts(row["details"], details)
            if counts is not None:
                before = {c: row[c] for c in COUNT_COLUMNS}
                counts = StepCounts(**add_up(before, counts.__dict__))
        values.update(details=details, finished_at=stamp)
        if counts is not None:
            values.update({c: getattr(counts, c) for c in COUNT_COLUMNS})
    return values, counts, kept


def _fold_progress(row: Mapping[str, Any]) -> tuple[StepCounts, dict[str, Any]] | None:
    """The counts and details of a step with what an interrupted attempt reported as done
    (`PROGRESS`) added up, and that report cleared; None when there is none."""
    details = dict(row["details"] or {})
    prepared = details.get(PREPARED_KEY)
    if not prepared or prepared.get("mode") != PROGRESS:
        return None
    del details[PREPARED_KEY]
    before = {c: row[c] for c in COUNT_COLUMNS}
    counts = StepCounts(**add_up(before, prepared["counts"]))
    merged = add_up_parts(details, prepared["parts"]) or {}
    merged.update({k: v for k, v in details.items() if k.startswith("_")})
    if pieces := sorted({*details.get(COUNTED_KEY, []), *prepared.get("pieces", [])}):
        merged[COUNTED_KEY] = pieces
    return counts, merged


def _had_succeeded(status: str, finished_at: datetime | None) -> bool:
    """Whether a step's last outcome was a success: it is `succeeded`, or running again
    after one (a rerun keeps the finish time of the success it runs over, and only then
    does a running step have one)."""
    return status == StepStatus.SUCCEEDED.value or (
        status == StepStatus.RUNNING.value and finished_at is not None
    )


def _reports_no_work(
    counts: StepCounts | None, error: str | None, details: dict[str, Any] | None
) -> bool:
    """An outcome with nothing in it: no counts (a verification's `remaining` is a count),
    no error, no details but the run that recorded it and what it searched for."""
    return (
        counts in (None, StepCounts())
        and error is None
        and not set(details or {}) - {RUN_KEY, SEARCHED_KEY}
    )
