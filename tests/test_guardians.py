"""Minors and guardians (privacy policy 7.x): a child's request waits for a verified
guardian, a guardian's own identity is never searched, a child who comes of age while the
request waits is screened again, and a guardian's consent withdrawal erases everything."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dsrflow.datamap import DataMapError, parse_datamap
from dsrflow.gates import of_age_on
from dsrflow.intake import submit
from dsrflow.model import Status
from dsrflow.report import requests_frame
from dsrflow.tickets import Rejection, Ticket, parse_ticket
from flows.request import BatchIncomplete, process_requests
from pipeline import screening
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket

TODAY = datetime.now(UTC).date()
PARENT = [{"type": "email", "value": "parent@example.org"}]


def _guardian(verified: bool = True, identities: list[dict[str, str]] = PARENT,
              relation: str = "parent") -> dict[str, Any]:
    at = datetime(2026, 11, 20, 10, 0, tzinfo=UTC).isoformat()
    return {"relation": relation, "identities": identities,
            "verification": {"method": "household_registration",
                             "verified_at": at if verified else None}}


# -- the ticket -------------------------------------------------------------------------------
def test_a_ticket_says_a_guardian_acts_and_cannot_make_the_child_its_own_guardian() -> None:
    child = [{"type": "user_id", "value": "7"}]
    parsed = parse_ticket(ticket("T-1", "access", child, guardian=_guardian()))
    assert isinstance(parsed, Ticket) and parsed.guardian is not None
    assert parsed.guardian.verified and parsed.guardian.relation == "parent"

    same = parse_ticket(ticket("T-2", "access", child, guardian=_guardian(identities=child)))
    assert isinstance(same, Rejection)
    assert same.reason == "guardian.identities.0: is also one of the subject's identities"

    uncle = parse_ticket(ticket("T-3", "access", child, guardian=_guardian(relation="uncle")))
    assert isinstance(uncle, Rejection) and uncle.reason.startswith("guardian.relation:")

    early = _guardian()
    early["verification"]["verified_at"] = "2026-11-19T10:00:00+00:00"
    before = parse_ticket(ticket("T-4", "access", child, guardian=early))
    assert isinstance(before, Rejection)
    assert "guardian.verification.verified_at: before received_at" in before.reason

    # A guardian withdrawing consent withdraws it for everything: no scope needed.
    assert isinstance(parse_ticket(ticket("T-5", "consent_withdrawal", child,
                                          guardian=_guardian())), Ticket)
    assert isinstance(parse_ticket(ticket("T-6", "consent_withdrawal", child)), Rejection)


def test_a_birth_date_column_must_be_mapped_and_say_a_profile() -> None:
    doc = sqlworld.datamap_doc("sqlite://")
    users = doc["systems"]["db"]["tables"]["users"]
    for column, message in (("born", "columns used but not mapped: born"),
                            ("email", "birth_date_column email must be of category minors "
                             "or profile")):
        broken = {**doc, "systems": {"db": {**doc["systems"]["db"], "tables": {
            **doc["systems"]["db"]["tables"], "users": {**users, "birth_date_column": column}}}}}
        with pytest.raises(DataMapError) as caught:
            parse_datamap(broken, "datamap.yaml")
        assert caught.value.path == "systems.db.tables.users"
        assert caught.value.message == message


def test_a_child_born_on_the_29th_of_february_comes_of_age_on_the_1st_of_march() -> None:
    assert of_age_on(date(2012, 2, 29), 14) == date(2026, 3, 1)
    assert of_age_on(date(2012, 3, 5), 14) == date(2026, 3, 5)


# -- the flow, on PostgreSQL -------------------------------------------------------------------
@pytest.fixture
def world(
    tmp_path: Path, postgres_url: str, prefect_server: list[Path]
) -> Iterator[tuple[Runtime, sa.Engine]]:
    engine = sa.create_engine(postgres_url)
    sqlworld.load(engine, sqlworld.generate(random.Random(9), 8))
    rt = make_runtime(tmp_path, sqlworld.datamap_doc(postgres_url), ledger_url=postgres_url)
    previous = set_runtime(rt)
    yield rt, engine
    set_runtime(previous)
    rt.close()
    engine.dispose()


def _born(engine: sa.Engine, uid: int, born: date) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE users SET birthday = :b WHERE id = :i"),
                     {"b": born, "i": uid})


def _years_ago(years: int, days: int = 0) -> date:
    return TODAY.replace(year=TODAY.year - years) + timedelta(days=days)


def _submit(rt: Runtime, raw: dict[str, Any]) -> str:
    return submit(rt.ledger, rt.datamap, raw).request_id


def test_a_childs_erasure_waits_for_a_guardian_and_touches_nothing(
    world: tuple[Runtime, sa.Engine],
) -> None:
    rt, engine = world
    _born(engine, 2, _years_ago(10))
    before = sqlworld.snapshot(engine)
    child = _submit(rt, ticket("T-1", "erasure", [{"type": "user_id", "value": "2"}]))
    adult = _submit(rt, ticket("T-2", "erasure", [{"type": "user_id", "value": "3"}]))

    assert process_requests([child, adult]) == {child: "awaiting_guardian", adult: "completed"}
    record = rt.ledger.get(child)
    assert record.status is Status.AWAITING_GUARDIAN and record.status.is_open
    assert record.reason == ("the subject is under 14: a verified parent or guardian must "
                             "make or confirm the request (privacy policy 7.x)")
    # Nothing of the child's changed; the adult's erasure went ahead in the same batch.
    after = sqlworld.snapshot(engine)
    assert after["users"][(2,)] == before["users"][(2,)]
    assert after["users"][(3,)] != before["users"][(3,)]
    assert {s.action.value for s in rt.ledger.steps([child])} == {"resolve"}
    # The next run does not pick it up: it waits for a person (or a birthday).
    assert child not in rt.ledger.runnable()

    frame = requests_frame(rt.ledger, rt.deadlines).set_index("ticket_id")
    assert bool(frame.loc["T-1", "minor"]) and not bool(frame.loc["T-2", "minor"])
    assert frame.loc["T-1", "deadline_state"] in ("on_time", "at_risk", "overdue")


def test_a_verified_guardian_lets_a_childs_request_run_and_is_never_searched(
    world: tuple[Runtime, sa.Engine],
) -> None:
    rt, engine = world
    _born(engine, 2, _years_ago(9))
    before = sqlworld.snapshot(engine)
    # The parent is a user too (user 5): their own rows are not the child's.
    parent_email = str(before["users"][(5,)]["email"])
    guardian = _guardian(identities=[{"type": "email", "value": parent_email}])
    rid = _submit(rt, ticket("T-1", "erasure", [{"type": "user_id", "value": "2"}],
                             guardian=guardian))

    assert process_requests([rid]) == {rid: "completed"}
    after = sqlworld.snapshot(engine)
    assert after["users"][(2,)] != before["users"][(2,)]
    for table, rows in before.items():
        for key, row in rows.items():
            if row.get("user_id") == 5 or (table == "users" and key == (5,)):
                assert after[table].get(key) == row, f"{table} {key} of the guardian changed"
    frame = requests_frame(rt.ledger, rt.deadlines).set_index("ticket_id")
    assert bool(frame.loc["T-1", "minor"])
    assert frame.loc["T-1", "guardian"] == "parent (verified)"


def test_an_unverified_guardian_waits_until_verified(world: tuple[Runtime, sa.Engine]) -> None:
    rt, engine = world
    _born(engine, 2, _years_ago(12))
    rid = _submit(rt, ticket("T-1", "access", [{"type": "user_id", "value": "2"}],
                             guardian=_guardian(verified=False)))
    assert process_requests([rid]) == {rid: "awaiting_guardian"}
    assert "guardianship is not verified yet" in (rt.ledger.get(rid).reason or "")

    assert rt.ledger.verify_guardian(rid, "court_order", datetime.now(UTC)) is Status.VERIFIED
    assert process_requests([rid]) == {rid: "completed"}
    assert rt.ledger.get(rid).guardian_verified_at is not None


def test_a_child_who_comes_of_age_while_waiting_is_screened_again(
    world: tuple[Runtime, sa.Engine], monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt, engine = world
    _born(engine, 4, _years_ago(14, days=3))  # turns 14 in three days
    rid = _submit(rt, ticket("T-1", "access", [{"type": "user_id", "value": "4"}]))
    assert process_requests([rid]) == {rid: "awaiting_guardian"}

    assert rt.ledger.came_of_age(TODAY + timedelta(days=2)) == []
    assert rt.ledger.came_of_age(TODAY + timedelta(days=3)) == [rid]
    assert rt.ledger.get(rid).status is Status.VERIFIED
    # Screened again on the day: fourteen now, so it goes on.
    later = datetime.now(UTC) + timedelta(days=3, hours=12)
    monkeypatch.setattr(screening, "now", lambda: later)
    assert process_requests([rid]) == {rid: "completed"}


def test_a_guardians_consent_withdrawal_erases_the_child_everywhere(
    world: tuple[Runtime, sa.Engine],
) -> None:
    rt, engine = world
    _born(engine, 6, _years_ago(8))
    before = sqlworld.snapshot(engine)
    rid = _submit(rt, ticket("T-1", "consent_withdrawal", [{"type": "user_id", "value": "6"}],
                             scope=["media"], guardian=_guardian()))
    assert rt.ledger.get(rid).scope is None  # everything, whatever the ticket named
    assert process_requests([rid]) == {rid: "completed"}
    after = sqlworld.snapshot(engine)
    # Not only media: the profile and contact fields went too.
    assert after["users"][(6,)]["email"] != before["users"][(6,)]["email"]
    assert after["users"][(6,)]["nickname"] is None
    erased = {s.system for s in rt.ledger.steps([rid]) if s.action.value == "erase"}
    assert erased == {"db"}


def test_an_age_that_cannot_be_read_fails_the_request_not_passes_it(
    world: tuple[Runtime, sa.Engine], monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt, _ = world
    rid = _submit(rt, ticket("T-1", "access", [{"type": "user_id", "value": "2"}]))

    def broken(*_: Any) -> Any:
        raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(type(rt.sql("db")), "birth_dates", broken)
    with pytest.raises(BatchIncomplete):
        process_requests([rid])
    record = rt.ledger.get(rid)
    assert record.status is Status.FAILED
    assert record.reason is not None and record.reason.startswith("age not checked in db")
