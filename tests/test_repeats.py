"""Repeated requests (privacy policy 6.6.2): found by keyed token through any identity of the
subject, decided once per request as the settings say, and shown in the report."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.sql import SqlConnector
from dsrflow.exports import exported_systems
from dsrflow.gates import (
    DEFAULT_REPEAT_RULES,
    Earlier,
    RepeatDecision,
    RepeatRule,
    repeat_of,
)
from dsrflow.identities import Identity, IdentityType
from dsrflow.intake import submit
from dsrflow.ledger import Ledger
from dsrflow.model import RequestType, Status
from dsrflow.report import requests_frame
from dsrflow.report.frames import CLOSED_STATES
from dsrflow.report.request_view import build_request_view
from dsrflow.tickets import Ticket, parse_ticket
from flows.request import process_requests
from pipeline.runtime import Runtime, set_runtime
from pipeline.screening import screen
from tests import sqlworld
from tests.helpers import make_runtime, ticket

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)


def _earlier(days_before: float, status: Status = Status.COMPLETED,
             type_: RequestType = RequestType.ACCESS, rid: str = "e1") -> Earlier:
    at = T0 - timedelta(days=days_before)
    return Earlier(rid, f"T-{rid}", type_, status, at, at)


def _decide(*others: Earlier, type_: RequestType = RequestType.ACCESS,
            rules: dict[RequestType, RepeatRule] | None = None) -> str:
    return repeat_of("me", type_, T0, T0, others, rules or DEFAULT_REPEAT_RULES).decision


# -- the rule ---------------------------------------------------------------------------------
def test_an_access_inside_its_window_is_flagged_and_outside_it_is_not() -> None:
    assert _decide(_earlier(29.9)) == RepeatDecision.FLAG
    assert _decide(_earlier(30)) == RepeatDecision.FLAG  # the window's first moment
    assert _decide(_earlier(30.01)) == RepeatDecision.NONE


def test_only_an_earlier_request_that_was_served_counts() -> None:
    # A rejected ticket, or a request refused as a repeat itself, served nobody: counting
    # it would let a chain of refusals stretch the window for ever.
    assert _decide(_earlier(3, Status.REJECTED)) == RepeatDecision.NONE
    assert _decide(_earlier(3, Status.REFUSED)) == RepeatDecision.NONE
    # One still being answered does: a second ticket filed while the first runs.
    assert _decide(_earlier(3, Status.IN_PROGRESS)) == RepeatDecision.FLAG
    # Another type is not a repeat.
    assert _decide(_earlier(3, type_=RequestType.PORTABILITY)) == RepeatDecision.NONE


def test_an_erasure_repeats_only_a_completed_erasure_and_is_allowed() -> None:
    erasure = RequestType.ERASURE
    assert _decide(_earlier(3, Status.FAILED, erasure), type_=erasure) == RepeatDecision.NONE
    found = repeat_of("me", erasure, T0, T0, [_earlier(3, type_=erasure)],
                      DEFAULT_REPEAT_RULES)
    assert found.decision == RepeatDecision.ALLOW
    assert found.related_request_id == "e1"
    assert "new data" not in found.reason and "processed" in found.reason


def test_the_latest_earlier_request_is_named_and_a_refusal_says_why() -> None:
    rules = {RequestType.ACCESS: RepeatRule(decision=RepeatDecision.REFUSE, window_days=10)}
    found = repeat_of("me", RequestType.ACCESS, T0, T0,
                      [_earlier(8, rid="old"), _earlier(2, rid="new")], rules)
    assert found.decision == RepeatDecision.REFUSE
    assert found.related_request_id == "new"
    assert found.reason == (
        "repeats request T-new received 2026-09-29, within 10 days: refused under the "
        "privacy policy 6.6.2 (repeated requests); its answer stands"
    )


@settings(max_examples=200, deadline=None)
@given(
    gap=st.floats(min_value=-5, max_value=5, allow_nan=False),
    created_gap=st.integers(min_value=-3, max_value=3),
)
def test_of_two_requests_exactly_one_is_the_repeat(gap: float, created_gap: int) -> None:
    """Whatever the receipt and recording times, two requests of one subject never both
    repeat each other (which would refuse both) and, inside the window, never neither."""
    a_at = T0
    b_at = T0 + timedelta(days=gap)
    a = Earlier("a", "T-a", RequestType.ACCESS, Status.IN_PROGRESS, a_at, T0)
    b = Earlier("b", "T-b", RequestType.ACCESS, Status.IN_PROGRESS, b_at,
                T0 + timedelta(seconds=created_gap))
    a_repeats = repeat_of("a", a.type, a.received_at, a.created_at, [b],
                          DEFAULT_REPEAT_RULES).decision == RepeatDecision.FLAG
    b_repeats = repeat_of("b", b.type, b.received_at, b.created_at, [a],
                          DEFAULT_REPEAT_RULES).decision == RepeatDecision.FLAG
    assert a_repeats != b_repeats


def test_settings_name_one_type_and_keep_the_others_defaults(tmp_path: Path) -> None:
    rt = make_runtime(tmp_path, sqlworld.datamap_doc(f"sqlite:///{tmp_path / 'x.db'}"),
                      repeats={"access": {"decision": "refuse", "window_days": 7}})
    try:
        rules = rt.settings.repeats
        assert rules[RequestType.ACCESS] == RepeatRule(decision=RepeatDecision.REFUSE,
                                                       window_days=7)
        assert rules[RequestType.PORTABILITY] == DEFAULT_REPEAT_RULES[RequestType.PORTABILITY]
    finally:
        rt.close()
    with pytest.raises(ValueError, match=r"repeats\.access\.decision"):
        make_runtime(tmp_path, {}, repeats={"access": {"decision": "charge"}})


# -- the ledger finds the subject by token ------------------------------------------------------
def _accept(ledger: Ledger, ticket_id: str, identities: list[dict[str, str]]) -> str:
    parsed = parse_ticket(ticket(ticket_id, "access", identities))
    assert isinstance(parsed, Ticket)
    return ledger.accept(parsed, "v1", "p1")[0]


def test_the_ledger_finds_a_subject_through_an_identity_learnt_from_their_rows(
    ledger: Ledger,
) -> None:
    first = _accept(ledger, "T-1", [{"type": "email", "value": "ana@example.com"}])
    ledger.add_identities(first, [Identity.read(IdentityType.PHONE, "+8613800138000")])
    second = _accept(ledger, "T-2", [{"type": "phone", "value": "+86 138 0013 8000"}])
    stranger = _accept(ledger, "T-3", [{"type": "email", "value": "ben@example.com"}])
    # A device id many people may share never makes two requests one subject's.
    ledger.add_identities(stranger, [Identity.read(IdentityType.DEVICE_ID, "tablet-1")])
    ledger.add_identities(second, [Identity.read(IdentityType.DEVICE_ID, "tablet-1")])

    found = ledger.same_subject_requests([first, second, stranger])
    assert [e.request_id for e in found[second]] == [first]
    assert [e.request_id for e in found[first]] == [second]
    assert found[stranger] == []
    # Tokens only: the ledger compared keyed digests, and holds no other copy.
    with ledger.engine.connect() as conn:
        tokens = conn.execute(sa.text("SELECT token FROM identity_tokens")).scalars().all()
    raw = {"ana@example.com", "ben@example.com", "+8613800138000", "tablet-1"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", t) for t in tokens) and not raw & set(tokens)


# -- the flow -----------------------------------------------------------------------------------
@pytest.fixture
def pg_runtime(
    tmp_path: Path, postgres_url: str, prefect_server: list[Path],
    request: pytest.FixtureRequest,
) -> Iterator[Runtime]:
    """The user database and the ledger on PostgreSQL; `repeats` settings as the test's
    parameter says (the defaults without one)."""
    engine = sa.create_engine(postgres_url)
    sqlworld.load(engine, sqlworld.generate(random.Random(5), 6))
    engine.dispose()
    extra = {"repeats": request.param} if hasattr(request, "param") else {}
    rt = make_runtime(tmp_path, sqlworld.datamap_doc(postgres_url), ledger_url=postgres_url,
                      **extra)
    previous = set_runtime(rt)
    yield rt
    set_runtime(previous)
    rt.close()


def _at(days: float) -> dict[str, Any]:
    received = T0 + timedelta(days=days)
    return {"received_at": received.isoformat(),
            "verification": {"method": "sms_code",
                             "verified_at": (received + timedelta(minutes=5)).isoformat()}}


def _user(rt: Runtime, uid: int) -> dict[str, Any]:
    with rt.sql("db").engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT * FROM users WHERE id = :i"), {"i": uid})
                    .one()._mapping)


@pytest.mark.parametrize(
    "pg_runtime", [{"access": {"decision": "refuse", "window_days": 30}}], indirect=True
)
def test_a_repeat_through_another_identity_is_refused_before_any_system_is_read(
    pg_runtime: Runtime,
) -> None:
    rt = pg_runtime
    user = _user(rt, 2)
    first = submit(rt.ledger, rt.datamap, ticket(
        "T-1", "access", [{"type": "email", "value": user["email"]}], **_at(0))).request_id
    assert process_requests([first])[first] == "completed"

    # Ten days later, by the user id alone: the same subject only once their rows are read
    # (the first request gave the email; the account's rows tie the two together).
    again = submit(rt.ledger, rt.datamap, ticket(
        "T-2", "access", [{"type": "user_id", "value": "2"}], **_at(10))).request_id
    later = submit(rt.ledger, rt.datamap, ticket(
        "T-3", "access", [{"type": "user_id", "value": "2"}], **_at(45))).request_id
    other = submit(rt.ledger, rt.datamap, ticket(
        "T-4", "access", [{"type": "user_id", "value": "3"}], **_at(10))).request_id
    outcome = process_requests([again, later, other])

    assert outcome == {again: "refused", later: "completed", other: "completed"}
    refused = rt.ledger.get(again)
    assert refused.status is Status.REFUSED and refused.completed_at is not None
    assert refused.reason is not None and "repeats request T-1" in refused.reason
    # Refused at the gate: no system collected anything for it; the one 45 days later
    # (outside the window) and another subject's were served.
    assert [s.action.value for s in rt.ledger.steps([again])] == ["resolve"]
    assert exported_systems(rt.settings.exports_path, again) == []
    served = {(s.action.value, s.status.value) for s in rt.ledger.steps([later])}
    assert {("collect", "succeeded"), ("deliver", "succeeded")} <= served

    frame = requests_frame(rt.ledger, rt.deadlines).set_index("ticket_id")
    assert frame.loc["T-2", "repeat"] == "refuse" and frame.loc["T-2", "repeat_of"] == "T-1"
    assert frame.loc[["T-3", "T-4"], "repeat"].isna().all()
    assert frame.loc["T-2", "deadline_state"] in CLOSED_STATES  # answered: the clock stops
    events = _audit_events(rt, again)
    assert ("request.gate", "refuse") in events


def test_a_flagged_repeat_is_served_and_a_rerun_does_not_decide_again(
    pg_runtime: Runtime,
) -> None:
    rt = pg_runtime
    user = _user(rt, 4)
    first = submit(rt.ledger, rt.datamap, ticket(
        "T-1", "access", [{"type": "email", "value": user["email"]}], **_at(0))).request_id
    second = submit(rt.ledger, rt.datamap, ticket(
        "T-2", "access", [{"type": "email", "value": user["email"].upper()}],
        **_at(3))).request_id
    assert process_requests([first, second]) == {first: "completed", second: "completed"}
    decided = rt.ledger.gate_decisions([first, second])
    assert decided[first][next(iter(decided[first]))].decision == RepeatDecision.NONE
    (flag,) = decided[second].values()
    assert (flag.decision, flag.related_request_id) == (RepeatDecision.FLAG, first)
    facts = dict(build_request_view(rt.ledger, rt.deadlines, second).facts)
    assert facts["gate: repeat"].startswith("flag: repeats request T-1 received 2026-10-01")

    # The earlier request is refused after the fact (a person's decision): the flagged
    # one keeps its decision, and its audit trail has one gate entry.
    with rt.ledger.engine.begin() as conn:
        conn.execute(sa.text("UPDATE requests SET status = 'refused' WHERE id = :i"),
                     {"i": first})
    with rt.ledger.engine.begin() as conn:
        conn.execute(sa.text("UPDATE requests SET status = 'in_progress' WHERE id = :i"),
                     {"i": second})
    screen(rt, [second])
    assert rt.ledger.gate_decisions([second])[second] == decided[second]
    assert _audit_events(rt, second).count(("request.gate", "flag")) == 1


def _audit_events(rt: Runtime, request_id: str) -> list[tuple[str, str | None]]:
    with rt.ledger.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT event, detail FROM audit_events WHERE request_id = :i ORDER BY id"),
            {"i": request_id}).all()
    out = []
    for event, detail in rows:
        data = detail if isinstance(detail, dict) else json.loads(detail)
        out.append((event, data.get("decision")))
    return out


# -- a subject who asked twice in one batch ------------------------------------------------------
def test_a_subject_who_asks_twice_in_one_batch_is_resolved_as_if_asking_once(
    db_url: str,
) -> None:
    """Two requests of one person, by two identities, in the same batch own the same rows.
    Each must learn from them what it would learn alone (a batch must not change what a
    request finds), or neither knows the other's identities: the repeat goes unseen, and a
    partner that takes only emails gets a phone number it cannot use."""
    engine = sa.create_engine(db_url)
    world = sqlworld.generate(random.Random(12), 6)
    sqlworld.load(engine, world)
    connector = SqlConnector("db", sqlworld.datamap().sql("db"), engine)
    try:
        by_email = world.subject(3, "r-email", IdentityType.EMAIL)
        by_phone = world.subject(3, "r-phone", IdentityType.PHONE)
        other = world.subject(4, "r-other", IdentityType.EMAIL)
        together = connector.discover([by_email, by_phone, other])
        for alone in (by_email, by_phone, other):
            assert together[alone.request_id] == connector.discover([alone])[alone.request_id]
        assert Identity.read(IdentityType.USER_ID, "3") in together["r-phone"].found
        assert together["r-email"].withheld == {}
    finally:
        connector.dispose()
        engine.dispose()
