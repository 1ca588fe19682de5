"""Legal holds (privacy policy 6.6.3, 6.5.2): what a hold covers is kept whole and counted,
everything else of the subject is erased, nothing of anyone else changes; holds are found
through any identity of the subject; releasing or expiring a hold re-queues exactly what it
held back."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.sql import SqlConnector
from dsrflow.crypto import Pseudonymizer, new_key
from dsrflow.datamap import parse_datamap
from dsrflow.holds import APPEALS, Held, HoldReason, LegalHold, end_of_day, held_in
from dsrflow.identities import Identity, IdentityType, Subject
from dsrflow.intake import submit
from dsrflow.ledger import HoldRefused, Ledger
from dsrflow.model import Regime, RequestType, Status
from dsrflow.report import requests_frame
from dsrflow.tickets import Ticket, parse_ticket
from flows.request import process_requests
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket

NOW = datetime.now(UTC)
NEXT_YEAR = (NOW + timedelta(days=365)).date()


def _hold(categories: set[str] | None = None, systems: set[str] | None = None,
          hold_id: str = "h1") -> LegalHold:
    return LegalHold(hold_id, "r", HoldReason.CRIMINAL_INVESTIGATION, "case 7",
                     end_of_day(NEXT_YEAR), "legal", frozenset(categories) if categories else None,
                     frozenset(systems) if systems else None, NOW)


# -- what a hold keeps ------------------------------------------------------------------------
def test_the_exemptions_are_the_policys_eight() -> None:
    assert [r.value for r in HoldReason] == [
        "legal_obligation", "national_security", "public_safety", "criminal_investigation",
        "abuse_of_rights", "protecting_life_or_property", "harm_to_others", "trade_secrets",
    ]
    # CCPA asks for the basis of a denial, not for a way to appeal it.
    assert set(APPEALS) == {Regime.PIPL, Regime.GDPR, Regime.UK_GDPR}


def test_a_hold_keeps_its_categories_in_its_systems_only() -> None:
    cats = frozenset({"contact", "transaction", "content"})
    assert held_in([_hold({"transaction"})], "db", cats) == Held(
        frozenset({"transaction"}), (_hold({"transaction"}),))
    assert held_in([_hold({"location"})], "db", cats) is None
    assert held_in([_hold(systems={"logs"})], "db", cats) is None
    assert held_in([_hold(systems={"db"})], "db", cats).categories is None  # type: ignore[union-attr]
    # Two holds that together cover every category of the system keep all of it.
    both = held_in([_hold({"contact", "content"}), _hold({"transaction"}, hold_id="h2")],
                   "db", cats)
    assert both is not None and both.categories is None and len(both.holds) == 2
    assert end_of_day(date(2027, 6, 30)).isoformat() == "2027-06-30T23:59:59.999999+00:00"


# -- the SQL connector ------------------------------------------------------------------------
def _connector(url: str, doc: dict[str, Any], seed: int, n_users: int) -> tuple[
        SqlConnector, sqlworld.World]:
    engine = sa.create_engine(url)
    if url.startswith("sqlite"):
        sa.event.listen(engine, "connect", lambda c, _: c.execute("PRAGMA foreign_keys=ON"))
    world = sqlworld.generate(random.Random(seed), n_users)
    sqlworld.load(engine, world)
    return SqlConnector("db", parse_datamap(doc, "test").sql("db"), engine), world


def _resolved(world: sqlworld.World, uid: int) -> Subject:
    """A subject with every identity their account holds, as the pipeline's resolution
    gives them before anything is erased (after it, the email is a pseudonym: only the
    user id still finds the held rows, as it finds them in a real run)."""
    parts = [world.subject(uid, f"r{uid}", kind).identities[0]
             for kind in (IdentityType.USER_ID, IdentityType.EMAIL, IdentityType.PHONE)]
    return Subject(request_id=f"r{uid}", phone_region="CN", identities=tuple(parts))


def _held(categories: set[str] | None) -> Held:
    hold = _hold(categories)
    return Held(hold.categories, (hold,))


def _table_categories(doc: dict[str, Any], table: str) -> set[str]:
    return {c["category"] for c in doc["systems"]["db"]["tables"][table]["columns"].values()}


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n_users=st.integers(2, 8), data=st.data())
def test_property_a_hold_keeps_exactly_its_scope_and_nothing_else_changes(
    db_url: str, seed: int, n_users: int, data: st.DataObject,
) -> None:
    doc = sqlworld.datamap_doc(db_url)
    connector, world = _connector(db_url, doc, seed, n_users)
    try:
        chosen = data.draw(st.sets(st.integers(1, n_users), min_size=1, max_size=n_users))
        held_uids = data.draw(st.sets(st.sampled_from(sorted(chosen)), min_size=1))
        categories = data.draw(st.none() | st.sets(st.sampled_from(
            ["contact", "content", "device", "behaviour", "media", "transaction", "profile"]),
            min_size=1, max_size=3))
        subjects = [_resolved(world, u) for u in chosen]
        held = {f"r{u}": _held(categories) for u in held_uids}
        before = sqlworld.snapshot(connector.engine)

        outcomes = connector.erase(subjects, None, {s.request_id: Pseudonymizer(new_key())
                                                    for s in subjects}, held=held)
        after = sqlworld.snapshot(connector.engine)

        for table, rows in before.items():
            in_hold = categories is None or bool(_table_categories(doc, table) & categories)
            for key, row in rows.items():
                owners = world.owners.get(table, {}).get(key, set())
                if not owners & chosen:
                    assert after[table].get(key) == row, f"{table} {key}: not a subject's"
                elif in_hold and owners <= held_uids:
                    assert after[table].get(key) == row, f"{table} {key}: held, yet changed"
        # Everything the holds do not cover is gone: the proof, with the holds.
        verified = connector.verify(subjects, None, held=held)
        assert all(o.total("remaining") == 0 for o in verified.values())
        # Counted as facts: what erase kept for a hold, the look finds kept.
        for rid in held:
            note = held[rid].notes[0]
            kept = sum(p.retained for p in outcomes[rid].parts.values() if note in p.retain_reasons)
            seen = sum(p.retained for p in verified[rid].parts.values()
                       if note in p.retain_reasons)
            assert kept == seen
    finally:
        connector.dispose()


def test_a_held_row_keeps_the_row_it_points_at_where_that_would_be_deleted(
    db_url: str,
) -> None:
    """Tags held (behaviour), their posts not: the posts stay, or the held tags would
    point at nothing; the subject's other content goes."""
    doc = copy.deepcopy(sqlworld.datamap_doc(db_url))
    doc["systems"]["db"]["tables"]["post_tags"]["columns"]["tag"]["category"] = "behaviour"
    connector, world = _connector(db_url, doc, seed=3, n_users=6)
    try:
        uid = next(u for u in range(1, 7)
                   if any(world.owners["post_tags"].get(k) == {u} for k in
                          world.owners["post_tags"]))
        tagged = {k[0] for k, who in world.owners["post_tags"].items() if who == {uid}}
        untagged = {k for k, who in world.owners["posts"].items()
                    if who == {uid} and k[0] not in tagged}
        subject = _resolved(world, uid).model_copy(update={"request_id": "r1"})
        held = {"r1": _held({"behaviour"})}
        outcome = connector.erase([subject], None, {"r1": Pseudonymizer(new_key())}, held=held)
        after = sqlworld.snapshot(connector.engine)
        assert {k[0] for k in after["posts"]} >= tagged
        assert not untagged & set(after["posts"])
        assert outcome["r1"].part("posts").retained == len(tagged)
        assert outcome["r1"].part("posts").retain_reasons == held["r1"].notes
        verified = connector.verify([subject], None, held=held)
        assert verified["r1"].total("remaining") == 0
    finally:
        connector.dispose()


# -- the ledger ---------------------------------------------------------------------------------
def _accept(ledger: Ledger, ticket_id: str, identities: list[dict[str, str]],
            type_: str = "erasure") -> str:
    parsed = parse_ticket(ticket(ticket_id, type_, identities))
    assert isinstance(parsed, Ticket)
    return ledger.accept(parsed, "v1", "p1")[0]


def test_a_hold_is_met_through_any_identity_of_the_subject_and_ends(ledger: Ledger) -> None:
    first = _accept(ledger, "T-1", [{"type": "email", "value": "ana@example.com"}])
    ledger.add_identities(first, [Identity.read(IdentityType.PHONE, "+8613800138000")])
    hold = ledger.add_hold(first, HoldReason.LEGAL_OBLIGATION, "tax audit 2026/41", NEXT_YEAR,
                           "legal@wishe", categories=["transaction"])
    later = _accept(ledger, "T-2", [{"type": "phone", "value": "+86 138 0013 8000"}])
    stranger = _accept(ledger, "T-3", [{"type": "email", "value": "ben@example.com"}])

    found = ledger.holds_for([first, later, stranger])
    assert [h.id for h in found[later]] == [hold.id] == [h.id for h in found[first]]
    assert stranger not in found

    with pytest.raises(HoldRefused, match="has passed"):
        ledger.add_hold(first, HoldReason.LEGAL_OBLIGATION, "x", date(2020, 1, 1), "legal")
    with pytest.raises(HoldRefused, match="needs a citation"):
        ledger.add_hold(first, HoldReason.LEGAL_OBLIGATION, " ", NEXT_YEAR, "legal")

    # It ends on its last day: expired the day after, once, and then met nowhere.
    assert ledger.expire_holds(hold.until) == []
    assert [h.id for h in ledger.expire_holds(hold.until + timedelta(seconds=1))] == [hold.id]
    assert ledger.expire_holds(hold.until + timedelta(days=1)) == []
    assert ledger.holds_for([later], at=hold.until + timedelta(days=1)) == {}
    with pytest.raises(HoldRefused, match="in force"):
        ledger.release_hold(hold.id, "legal", "done")


# -- the flow, on PostgreSQL -----------------------------------------------------------------
@pytest.fixture
def world(
    tmp_path: Path, postgres_url: str, prefect_server: list[Path]
) -> Iterator[tuple[Runtime, sa.Engine, sqlworld.World]]:
    engine = sa.create_engine(postgres_url)
    generated = sqlworld.generate(random.Random(21), 8)
    sqlworld.load(engine, generated)
    rt = make_runtime(tmp_path, sqlworld.datamap_doc(postgres_url), ledger_url=postgres_url)
    previous = set_runtime(rt)
    yield rt, engine, generated
    set_runtime(previous)
    rt.close()
    engine.dispose()


def _certificate(rt: Runtime, request_id: str) -> dict[str, Any]:
    [step] = [s for s in rt.ledger.steps([request_id]) if s.action.value == "certify"]
    return json.loads(Path(step.details["path"]).read_text())["certificate"]  # type: ignore[no-any-return]


def test_a_held_category_is_kept_and_certified_and_its_release_erases_exactly_it(
    world: tuple[Runtime, sa.Engine, sqlworld.World],
) -> None:
    rt, engine, generated = world
    buyer = min(o["user_id"] for o in generated.rows["orders"])
    # An earlier access request names the subject; the hold is placed on it.
    access = submit(rt.ledger, rt.datamap, ticket(
        "T-1", "access", [{"type": "user_id", "value": str(buyer)}])).request_id
    assert process_requests([access]) == {access: "completed"}
    hold = rt.ledger.add_hold(access, HoldReason.CRIMINAL_INVESTIGATION, "PSB notice 2026-118",
                              NEXT_YEAR, "dpo@wishe", categories=["content"])

    # The erasure comes by email: the same subject through another identity.
    email = str(generated.user(buyer)["email"])
    erase = submit(rt.ledger, rt.datamap, ticket(
        "T-2", "erasure", [{"type": "email", "value": email}])).request_id
    before = sqlworld.snapshot(engine)
    assert process_requests([erase]) == {erase: "completed"}
    after = sqlworld.snapshot(engine)

    mine = {t: {k for k, who in generated.owners.get(t, {}).items() if who == {buyer}}
            for t in before}
    for table in ("posts", "post_tags"):  # content: held, untouched
        assert mine[table] and all(after[table][k] == before[table][k] for k in mine[table])
    assert not mine["devices"] & set(after["devices"])  # the rest is erased
    assert after["users"][(buyer,)]["nickname"] is None

    steps = {(s.system, s.action.value): s for s in rt.ledger.steps([erase])}
    assert steps[("db", "verify")].remaining == 0
    note = f"legal hold: criminal_investigation until {NEXT_YEAR} (hold {hold.id[:8]})"
    assert note in steps[("db", "erase")].details["posts"]["retain_reasons"]
    certificate = _certificate(rt, erase)
    assert certificate["outcome"]["status"] == "complete"
    assert certificate["legal_holds"] == [{
        "hold": hold.id, "exemption": "criminal_investigation", "basis": "privacy policy 6.6.3",
        "until": NEXT_YEAR.isoformat(), "systems": ["db"], "categories": ["content"],
        "appeal": APPEALS[Regime.PIPL],
    }]
    frame = requests_frame(rt.ledger, rt.deadlines).set_index("ticket_id")
    assert frame.loc["T-2", "legal_holds"] == f"criminal_investigation until {NEXT_YEAR} (db)"
    # Closed, yet its identities are kept (encrypted) to finish the held part.
    assert rt.ledger.get(erase).status is Status.COMPLETED
    assert rt.ledger.requeue_released() == []  # still in force: nothing to re-queue

    rt.ledger.release_hold(hold.id, "dpo@wishe", "investigation closed")
    [follow] = rt.ledger.requeue_released()
    assert rt.ledger.requeue_released() == []  # once
    record = rt.ledger.get(follow)
    assert (record.type, record.status, record.systems, record.follows_request_id) == (
        RequestType.ERASURE, Status.VERIFIED, frozenset({"db"}), erase)
    assert record.ticket_id is not None and record.ticket_id.startswith("T-2.held-")

    held_back = sqlworld.snapshot(engine)
    assert process_requests([follow]) == {follow: "completed"}
    done = sqlworld.snapshot(engine)
    # Exactly the held part went: the subject's posts and tags; nothing else changed.
    for table, rows in held_back.items():
        for key, row in rows.items():
            if table in ("posts", "post_tags") and key in mine[table]:
                assert key not in done[table]
            else:
                assert done[table].get(key) == row, f"{table} {key} changed on release"
    assert _certificate(rt, follow)["request"]["follows_request_id"] == erase
    assert _certificate(rt, follow)["legal_holds"] == []
    with rt.ledger.engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT held_subject_enc FROM requests WHERE id = :i"),
                            {"i": erase}).scalar_one()
    assert kept is None  # nothing of it is held any more: its identities are gone


def test_a_whole_system_held_is_not_erased_nor_failed_by_its_verification(
    world: tuple[Runtime, sa.Engine, sqlworld.World],
) -> None:
    rt, engine, _ = world
    erase = submit(rt.ledger, rt.datamap, ticket(
        "T-1", "account_cancellation", [{"type": "user_id", "value": "3"}])).request_id
    rt.ledger.add_hold(erase, HoldReason.LEGAL_OBLIGATION, "court order 88", NEXT_YEAR,
                       "dpo@wishe", systems=["db"])
    before = sqlworld.snapshot(engine)
    assert process_requests([erase]) == {erase: "completed"}
    assert sqlworld.snapshot(engine) == before
    steps = {(s.system, s.action.value): s for s in rt.ledger.steps([erase])}
    kept = steps[("db", "erase")]
    assert kept.found and kept.retained == kept.found  # counted, every row of it kept
    assert steps[("db", "verify")].remaining == 0
    assert [p["system"] for p in rt.ledger.held_parts([erase])] == ["db"]


# -- object storage, logs and partners ---------------------------------------------------------
AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
       "AWS_DEFAULT_REGION": "us-east-1"}


def test_a_hold_keeps_a_bucket_a_log_system_and_a_partners_copy(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held: faces (biometric) and the logs. Erased: uploads and the database. Not asked:
    the partner that holds face data. Every kept thing is counted, with the hold's note."""
    import boto3

    from pipeline import steps

    for key, value in AWS.items():
        monkeypatch.setenv(key, value)
    generated, url = sqlworld.sqlite_world(tmp_path, 7, 6)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    suffix = f"{random.Random().getrandbits(40):x}"
    uploads, faces = f"uploads-{suffix}", f"faces-{suffix}"
    for bucket in (uploads, faces):
        s3.create_bucket(Bucket=bucket)
        for uid in (3, 4):
            s3.put_object(Bucket=bucket, Key=f"u/{uid}/1.jpg", Body=b"jpg")
    email = str(generated.user(3)["email"])
    log = tmp_path / "logs" / "app.log"
    log.parent.mkdir()
    log.write_text(f"login {email}\nlogin {generated.user(4)['email']}\nbye {email}\n")
    doc: dict[str, Any] = copy.deepcopy(sqlworld.datamap_doc(url))
    doc["systems"]["media"] = {"kind": "objects", "endpoint_url": s3_endpoint, "buckets": {
        uploads: {"category": "media", "action": "delete",
                  "ownership": [{"key_template": "u/{user_id}/"}]},
        faces: {"category": "biometric", "action": "delete",
                "ownership": [{"key_template": "u/{user_id}/"}]}}}
    doc["systems"]["applogs"] = {"kind": "logs", "sources": {"app": {
        "path": str(log), "format": "text", "identities": ["email"]}}}
    doc["systems"]["facepartner"] = {
        "kind": "partner", "protocol": "manual", "categories": ["biometric"],
        "identities": [{"type": "email"}], "contact": "dpo@facepartner.example"}
    rt = make_runtime(tmp_path, doc)
    try:
        rid = submit(rt.ledger, rt.datamap, ticket(
            "T-1", "erasure", [{"type": "email", "value": email}])).request_id
        hold = rt.ledger.add_hold(rid, HoldReason.LEGAL_OBLIGATION, "court order 5", NEXT_YEAR,
                                  "dpo", categories=["biometric", "logs"])
        gate = steps.open_requests(rt, [rid], owner="test-run")
        steps.resolve_identities(rt, gate.ready)
        before_log = log.read_bytes()
        for system in ("media", "applogs", "facepartner", "db"):
            steps.apply_to_system(rt, system, [rid])
        results = {s: steps.verify_system(rt, s, [rid]) for s in ("media", "applogs", "db")}

        listed = {(b, o["Key"]) for b in (uploads, faces)
                  for o in s3.list_objects_v2(Bucket=b).get("Contents", [])}
        assert (faces, "u/3/1.jpg") in listed and (uploads, "u/3/1.jpg") not in listed
        assert (uploads, "u/4/1.jpg") in listed
        assert log.read_bytes() == before_log
        assert rt.ledger.partner_requests([rid]) == []  # not asked at all

        got = {(s.system, s.action.value): s for s in rt.ledger.steps([rid])}
        note = hold.note
        media = got[("media", "erase")]
        assert media.status == "succeeded" and media.deleted == 1 and media.retained == 1
        assert media.details[faces]["retain_reasons"] == [note]
        assert got[("applogs", "erase")].retained == 2 and got[("applogs", "erase")].deleted == 0
        assert got[("facepartner", "erase")].details["legal_hold"]["retain_reasons"] == [note]
        for system, verified in results.items():
            assert [r.remaining for r in verified] == [0], system
        assert got[("media", "verify")].retained == 1
        assert {p["system"] for p in rt.ledger.held_parts([rid])} == {
            "media", "applogs", "facepartner"}
    finally:
        rt.close()


def test_held_rows_are_marked_restricted_where_the_table_has_a_column_for_it(
    tmp_path: Path,
) -> None:
    """Wishe's users table has `restricted_at`: a held account row is kept as it was, and
    marked restricted (kept for the hold, processed for nothing else)."""
    from examples.wishe.generate import build_world
    from examples.wishe.subjects import by_id
    from tests.helpers import wishe_datamap

    url = f"sqlite:///{tmp_path / 'wishe.db'}"
    build_world(url, users=12)
    system = parse_datamap(wishe_datamap(url)).sql("userdb")
    connector = SqlConnector("userdb", system)
    try:
        subject = Subject(request_id="r1", phone_region="CN", identities=(
            Identity.read(IdentityType.USER_ID, "1"),
            Identity.read(IdentityType.EMAIL, by_id(1).email)))
        before = dict(_row(connector, 1))
        assert before["restricted_at"] is None
        held = {"r1": _held({"account"})}
        outcome = connector.erase([subject], None, {"r1": Pseudonymizer(new_key())}, held=held)
        after = dict(_row(connector, 1))
        assert after.pop("restricted_at") is not None
        before.pop("restricted_at")
        assert after == before
        assert held["r1"].notes[0] in outcome["r1"].part("users").retain_reasons
        # Everything else of hers is gone (location history is not `account`).
        with connector.engine.connect() as conn:
            assert conn.execute(sa.text(
                "SELECT count(*) FROM location_history WHERE user_id = 1")).scalar_one() == 0
    finally:
        connector.dispose()


def _row(connector: SqlConnector, uid: int) -> Any:
    with connector.engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM users WHERE id = :i"), {"i": uid}).one()._mapping


def test_two_releases_at_once_requeue_a_held_part_once(ledger: Ledger) -> None:
    """`dsrflow hold release` and the resume flow's expiry may run at the same moment:
    one follow-up, whichever wins."""
    import threading

    rid = _accept(ledger, "T-1", [{"type": "email", "value": "ana@example.com"}])
    hold = ledger.add_hold(rid, HoldReason.TRADE_SECRETS, "NDA 12", NEXT_YEAR, "legal")
    ledger.keep_held_parts([(rid, "db", [hold.id]), (rid, "media", [hold.id])])
    ledger.keep_held_parts([(rid, "db", [hold.id])])  # a rerun records nothing twice
    ledger.release_hold(hold.id, "legal", "settled")
    barrier = threading.Barrier(2)
    made: list[list[str]] = []

    def requeue() -> None:
        barrier.wait()
        made.append(ledger.requeue_released())

    threads = [threading.Thread(target=requeue) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    [follow] = [i for ids in made for i in ids]
    record = ledger.get(follow)
    assert record.systems == frozenset({"db", "media"}) and record.follows_request_id == rid
    # The follow-up is the same subject: its tokens came along, and it has the identities.
    assert ledger.same_subject_requests([follow])[follow][0].request_id == rid
    assert [s.identities for s in ledger.subjects([follow])] == [
        s.identities for s in ledger.subjects([rid])]
