"""A partner request's state never goes backwards, whatever the interleaving of the POST's
answer, callbacks, polls, reruns, a person's retry or confirmation (on SQLite and
PostgreSQL): every change is a compare-and-set against `PARTNER_TRANSITIONS`."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsrflow.ledger import Ledger
from dsrflow.model import PARTNER_DONE, PartnerStatus
from tests.test_ledger import make_ticket

P = PartnerStatus
RANK = {P.CREATED: 0, P.SUBMITTED: 1, P.AWAITING_CONFIRMATION: 1, P.PENDING: 2,
        P.IN_PROGRESS: 3, P.BLOCKED: 4, P.COMPLETED: 5, P.CONFIRMED: 5}
# What each actor writes: (target, narrowed sources) — a person's retry only from blocked,
# a resend only after the partner lost a request it had acknowledged.
ACTS = {
    "post answered": (P.SUBMITTED, None),
    "manual partner": (P.AWAITING_CONFIRMATION, None),
    "callback pending": (P.PENDING, None),
    "callback in progress": (P.IN_PROGRESS, None),
    "callback completed": (P.COMPLETED, None),
    "poll completed": (P.COMPLETED, None),
    "refused or untrusted": (P.BLOCKED, None),
    "person confirms": (P.CONFIRMED, None),
    "person retries": (P.CREATED, frozenset({P.BLOCKED})),
    "partner lost it": (P.CREATED, frozenset({P.SUBMITTED})),
}
RESETS = {"person retries", "partner lost it"}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(sorted(ACTS)), min_size=1, max_size=12))
def test_no_state_goes_backwards(ledger: Ledger, acts: list[str]) -> None:
    rid, _ = ledger.accept(make_ticket(f"PS-{uuid.uuid4().hex[:12]}"), "dm", "pol")
    ledger.partner_request_id(rid, "adnet", lambda: str(uuid.uuid4()))
    state = P.CREATED
    for act in acts:
        target, expect = ACTS[act]
        changed = ledger.update_partner(rid, "adnet", target, expect=expect)
        [row] = ledger.partner_requests([rid])
        now = P(row.status)
        if not changed:
            assert now is state, (act, state, now)  # a lost write changes nothing
            continue
        assert now is target
        if state in PARTNER_DONE:
            raise AssertionError(f"{act} moved a finished request from {state}")
        if act not in RESETS:
            assert RANK[now] >= RANK[state], (act, state, now)
        state = now


TARGETS = [P.SUBMITTED, P.PENDING, P.IN_PROGRESS, P.COMPLETED, P.BLOCKED, P.CONFIRMED]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(TARGETS),
                          st.sampled_from(["", "refused", "timeout"])),
                min_size=1, max_size=10))
def test_a_batch_of_answers_ends_where_the_same_answers_one_by_one_end(
    ledger: Ledger, changes: list[tuple[int, PartnerStatus, str]],
) -> None:
    """`update_partners` (a group of callbacks, a batch's acknowledgements) decides each
    change under one lock and writes them together: every request ends in the state, with
    the values, that the same changes applied one at a time leave, and the ones reported
    applied are the ones that moved."""
    tag = uuid.uuid4().hex[:10]
    together, alone = ([ledger.accept(make_ticket(f"PB-{tag}-{side}{n}"), "dm", "pol")[0]
                        for n in range(3)] for side in "ab")
    for rid in [*together, *alone]:
        ledger.partner_request_id(rid, "adnet", lambda: str(uuid.uuid4()))
    applied = ledger.update_partners("adnet", [
        (together[n], target, {"error": error or None}) for n, target, error in changes])
    moved = {alone[n] for n, target, error in changes
             if ledger.update_partner(alone[n], "adnet", target, error=error or None)}
    rows = {r.request_id: r for r in ledger.partner_requests([*together, *alone])}
    for a, b in zip(together, alone, strict=True):
        assert (rows[a].status, rows[a].error) == (rows[b].status, rows[b].error)
        assert (a in applied) == (b in moved)
