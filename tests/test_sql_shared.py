"""Rows shared with people outside the request, on SQLite and PostgreSQL.

An order that ships to another customer's home, a household's card, an album whose cover
is someone else's photo, an account that referred another: erasing one person must leave
every row that is also someone else's exactly as it was, and say so (retained, "shared
with another data subject"), while everything that is the subject's alone is erased and
verified. The property tests check two things on random worlds (tests/sharedworld.py):
every row whose people (decided by the generator) are not all erased is byte-identical,
and the connector keeps exactly the rows the README's rules keep (an executable version of
them over the in-memory rows, written apart from the connector)."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.sql import SqlConnector
from connectors.sql_ownership import SHARED_REASON
from dsrflow.crypto import Pseudonymizer, is_pseudonym, new_key
from dsrflow.identities import Identity, IdentityType, Subject
from tests import sharedworld
from tests.sharedworld import OFFICE_IP, World

Key = tuple[Any, ...]
DELETING = {"addresses", "cards", "card_members", "devices", "sessions", "albums", "photos",
            "follows", "likes", "notes"}


def make_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    if url.startswith("sqlite"):
        # Foreign keys enforced, so a row deleted under another's reference fails loudly.
        sa.event.listen(engine, "connect", lambda c, _: c.execute("PRAGMA foreign_keys=ON"))
    return engine


def build(url: str, world: World) -> SqlConnector:
    engine = make_engine(url)
    sharedworld.load(engine, world)
    return SqlConnector("db", sharedworld.datamap(url).sql("db"), engine)


def keys_for(subjects: list[Subject]) -> dict[str, Pseudonymizer]:
    return {s.request_id: Pseudonymizer(new_key()) for s in subjects}


def resolved(connector: SqlConnector, subjects: list[Subject]) -> list[Subject]:
    """The subjects with the identities discovery learns, as the pipeline verifies them."""
    found = connector.discover(subjects)
    return [s.model_copy(update={"identities": (*s.identities, *sorted(
        found[s.request_id].found, key=lambda i: (i.type.value, i.value)))}) for s in subjects]


# -- the worlds the issue describes, one at a time ---------------------------------------------
def small_world() -> World:
    """Users 1 (the subject), 2 and 11 (a look-alike id); 2's order ships to 1's home; 1's
    card has 2 as a household member; 2's album uses 1's photo as its cover; 2 was referred
    by 1; 1 and 2 follow each other."""
    w = World()
    for uid in (1, 2, 11):
        w.add("users", {"id": uid, "email": f"user{uid}@example.com",
                        "phone": f"1380013{uid:04d}", "last_ip": f"203.0.113.{uid}",
                        "referrer_id": 1 if uid == 2 else None, "nickname": f"n{uid}"}, {uid})
    w.add("addresses", {"id": 100, "user_id": 1, "street": "1 Home St"}, {1, 2})
    w.add("addresses", {"id": 101, "user_id": 1, "street": "1 Work St"}, {1})
    w.add("orders", {"id": 200, "user_id": 2, "address_id": 100, "amount": 5,
                     "note": "gift for 1"}, {1, 2})
    w.add("orders", {"id": 201, "user_id": 1, "address_id": 101, "amount": 7,
                     "note": "for me"}, {1})
    w.add("orders", {"id": 202, "user_id": 11, "address_id": None, "amount": 9,
                     "note": "11's"}, {11})
    w.add("cards", {"id": 300, "user_id": 1, "last4": "0001"}, {1, 2})
    w.add("card_members", {"card_id": 300, "user_id": 2}, {1, 2})
    w.add("albums", {"id": 400, "user_id": 1, "cover_photo_id": 500}, {1, 2})
    w.add("photos", {"id": 500, "album_id": 400, "caption": "1's sunset"}, {1, 2})
    w.add("photos", {"id": 501, "album_id": 400, "caption": "1's cat"}, {1})
    w.add("albums", {"id": 401, "user_id": 2, "cover_photo_id": 500}, {1, 2})
    w.add("photos", {"id": 502, "album_id": 401, "caption": "2's beach"}, {2})
    w.add("follows", {"follower_id": 1, "followee_id": 2}, {1, 2})
    w.add("follows", {"follower_id": 2, "followee_id": 1}, {1, 2})
    w.add("follows", {"follower_id": 2, "followee_id": 11}, {2, 11})
    return w


def test_erasing_one_person_keeps_every_row_that_is_also_someone_elses(db_url: str) -> None:
    world = small_world()
    connector = build(db_url, world)
    before = sharedworld.snapshot(connector.engine)
    subjects = resolved(connector, [world.subject(1, "r1")])
    outcome = connector.erase(subjects, None, keys_for(subjects))["r1"]
    after = sharedworld.snapshot(connector.engine)

    # 2's gift order, the home it ships to, 2's membership of 1's card and the card, 2's
    # album with 1's photo as its cover, the photo, and the album the photo lives in.
    for table, key in [("orders", (200,)), ("addresses", (100,)), ("card_members", (300, 2)),
                       ("cards", (300,)), ("albums", (401,)), ("photos", (500,)),
                       ("photos", (502,)), ("albums", (400,))]:
        assert after[table][key] == before[table][key], (table, key)
    # 2's account (found because 1 referred it) and 2's and 11's other rows: untouched.
    assert after["users"][(2,)] == before["users"][(2,)]
    assert after["users"][(11,)] == before["users"][(11,)]
    assert after["orders"][(202,)] == before["orders"][(202,)]
    assert after["follows"][(2, 11)] == before["follows"][(2, 11)]
    # What is 1's alone is erased: the work address, 1's own order's note, the cat photo,
    # both follow edges (`shared: erase`), and 1's account is anonymized.
    assert (101,) not in after["addresses"] and (501,) not in after["photos"]
    assert after["orders"][(201,)]["note"] is None and after["orders"][(201,)]["amount"] == 7
    assert (1, 2) not in after["follows"] and (2, 1) not in after["follows"]
    assert is_pseudonym(after["users"][(1,)]["email"])
    assert after["users"][(1,)]["last_ip"] is None and after["users"][(1,)]["referrer_id"] is None

    # Said, not hidden: every kept row is retained with the reason.
    assert outcome.part("orders").retained == 2  # the gift (shared), 1's own (tax law)
    assert set(outcome.part("orders").retain_reasons) == {SHARED_REASON, sharedworld.TAX}
    assert outcome.part("addresses").retained == 1
    assert outcome.part("addresses").deleted == 1
    assert outcome.part("addresses").retain_reasons == [SHARED_REASON]
    assert outcome.part("photos").deleted == 1 and outcome.part("photos").retained == 2
    verified = connector.verify(subjects, None)["r1"]
    assert verified.total("remaining") == 0
    assert verified.part("addresses").retained == 1
    assert SHARED_REASON in verified.part("cards").retain_reasons


def test_rows_shared_inside_the_batch_are_erased_once_all_their_people_are_in_it(
    db_url: str,
) -> None:
    world = small_world()
    connector = build(db_url, world)
    subjects = resolved(connector, [world.subject(1, "r1"),
                                    world.subject(2, "r2", IdentityType.PHONE)])
    connector.erase(subjects, None, keys_for(subjects))
    after = sharedworld.snapshot(connector.engine)
    assert (100,) not in after["addresses"] and (300,) not in after["cards"]
    assert not after["card_members"] and not after["photos"] and not after["albums"]
    assert after["orders"][(200,)]["note"] is None
    assert after["follows"] == {}  # every edge has 1 or 2 at one end
    assert all(o.total("remaining") == 0 for o in connector.verify(subjects, None).values())


def test_a_row_that_points_at_nobodys_row_is_not_shared(db_url: str) -> None:
    world = small_world()
    world.add("addresses", {"id": 102, "user_id": None, "street": "Pickup point"}, set())
    world.add("orders", {"id": 203, "user_id": 2, "address_id": 102, "amount": 3,
                         "note": "to the pickup point"}, {2})
    connector = build(db_url, world)
    subjects = [world.subject(2, "r2")]
    outcome = connector.erase(subjects, None, keys_for(subjects))["r2"]
    after = sharedworld.snapshot(connector.engine)
    assert after["orders"][(203,)]["note"] is None  # 2's alone: the pickup point is no one's
    assert after["addresses"][(102,)]["street"] == "Pickup point"
    # 2's gift to 1's home is 1's too: kept.
    assert after["orders"][(200,)]["note"] == "gift for 1"
    assert SHARED_REASON in outcome.part("orders").retain_reasons


def test_collect_leaves_out_what_is_also_someone_elses(db_url: str) -> None:
    world = small_world()
    connector = build(db_url, world)
    records = connector.collect([world.subject(1, "r1")], None)["r1"]
    assert {r["id"] for r in records["orders"]} == {201}  # not 2's gift order
    assert {r["id"] for r in records["addresses"]} == {100, 101}  # 1's own, shared or not
    assert [r["id"] for r in records["users"]] == [1]  # not the account 1 referred


def test_rectify_and_restrict_leave_a_shared_row_as_it_is(db_url: str) -> None:
    world = small_world()
    connector = build(db_url, world)
    before = sharedworld.snapshot(connector.engine)
    outcome = connector.rectify(world.subject(1, "r1"), {"addresses.street": "New St"})
    after = sharedworld.snapshot(connector.engine)
    assert after["addresses"][(100,)] == before["addresses"][(100,)]  # 2's order ships there
    assert after["addresses"][(101,)]["street"] == "New St"
    assert outcome.part("addresses").retain_reasons == [SHARED_REASON]


# -- identities a shared row would lead to ---------------------------------------------------
def identity_world() -> World:
    """User 1 and 2 share an office IP and a family tablet; 2's phone is also in 3's row
    (a number a family shares)."""
    w = World()
    w.add("users", {"id": 1, "email": "one@example.com", "phone": "13800130001",
                    "last_ip": OFFICE_IP, "referrer_id": None, "nickname": "1"}, {1})
    w.add("users", {"id": 2, "email": "two@example.com", "phone": "13800130002",
                    "last_ip": "203.0.113.2", "referrer_id": None, "nickname": "2"}, {2})
    w.add("users", {"id": 3, "email": "three@example.com", "phone": "008613800130002",
                    "last_ip": "203.0.113.33", "referrer_id": None, "nickname": "3"}, {3})
    w.add("devices", {"id": 10, "user_id": 1, "device_id": "tablet-1"}, {1})
    w.add("devices", {"id": 11, "user_id": 2, "device_id": "tablet-1"}, {2})
    w.add("devices", {"id": 12, "user_id": 1, "device_id": "phone-of-1"}, {1})
    w.add("sessions", {"id": 20, "user_id": 1, "ip": OFFICE_IP}, {1})
    w.add("sessions", {"id": 21, "user_id": 2, "ip": OFFICE_IP}, {2})
    w.add("sessions", {"id": 22, "user_id": 1, "ip": "198.51.100.99"}, {1})
    return w


def test_discovery_learns_the_accounts_own_identities_and_withholds_shared_ones(
    db_url: str,
) -> None:
    world = identity_world()
    connector = build(db_url, world)
    found = connector.discover([world.subject(1, "r1"),
                                world.subject(2, "r2", IdentityType.USER_ID)])
    one, two = found["r1"], found["r2"]
    assert one.found == {
        Identity(type=IdentityType.USER_ID, value="1"),
        Identity.read(IdentityType.PHONE, "13800130001", "CN"),
        Identity(type=IdentityType.DEVICE_ID, value="phone-of-1"),
        Identity(type=IdentityType.IP, value="198.51.100.99"),
    }
    # The office IP and the tablet lead to 2's rows too; searching logs for them would
    # erase 2's lines.
    assert one.withheld == {"ip": 1, "device_id": 1}
    # 2's phone is also in 3's account: withheld, never searched for 2.
    assert Identity(type=IdentityType.EMAIL, value="two@example.com") in two.found
    assert two.withheld == {"phone": 1, "device_id": 1, "ip": 1}


def test_a_ticket_that_gives_a_shared_identity_erases_only_the_subjects_rows(
    db_url: str,
) -> None:
    world = identity_world()
    connector = build(db_url, world)
    before = sharedworld.snapshot(connector.engine)
    ticket = Subject(request_id="r1", phone_region="CN", identities=(
        Identity(type=IdentityType.EMAIL, value="one@example.com"),
        Identity(type=IdentityType.IP, value=OFFICE_IP),
        Identity(type=IdentityType.DEVICE_ID, value="tablet-1"),
    ))
    outcome = connector.erase([ticket], None, keys_for([ticket]))["r1"]
    after = sharedworld.snapshot(connector.engine)
    # 2's session from the office and 2's tablet row hold the same values: 2's, kept.
    assert after["sessions"][(21,)] == before["sessions"][(21,)]
    assert after["devices"][(11,)] == before["devices"][(11,)]
    assert after["users"][(2,)] == before["users"][(2,)]
    assert (20,) not in after["sessions"] and (10,) not in after["devices"]
    assert outcome.part("sessions").retain_reasons == [SHARED_REASON]
    assert connector.verify([ticket], None)["r1"].total("remaining") == 0


def test_an_ip_alone_vouches_for_no_account(db_url: str) -> None:
    world = identity_world()
    connector = build(db_url, world)
    before = sharedworld.snapshot(connector.engine)
    ticket = Subject(request_id="r", identities=(Identity(type=IdentityType.IP, value=OFFICE_IP),))
    connector.erase([ticket], None, keys_for([ticket]))
    after = sharedworld.snapshot(connector.engine)
    # User 1's row holds the office IP, but so does everyone behind that office: an
    # address is no proof of an account. Nothing of any account changes.
    assert after["users"] == before["users"]
    assert after["sessions"] == before["sessions"]


# -- properties ----------------------------------------------------------------------------------
def rules(world: World, erased: set[int]) -> tuple[dict[str, set[Key]], dict[str, set[Key]]]:
    """The README's rules over the in-memory rows: (found, kept) per table, for a batch
    that erases `erased` (each subject given by an account identity)."""
    tables = sharedworld.DATAMAP_DOC["systems"]["db"]["tables"]
    edges = [(child, ref["columns"][0], ref["table"], ref["shared"] == "keep")
             for child, spec in tables.items() for ref in spec.get("references", [])]
    rows = {t: {World.key(t, r): r for r in world.rows.get(t, [])} for t in tables}
    owners: dict[str, dict[Key, set[int]]] = defaultdict(dict)
    foreign: dict[str, set[Key]] = defaultdict(set)
    for uid in erased:
        owners["users"][(uid,)] = {uid}
    changed = True
    while changed:  # found: rows that point at found rows; another account leads nowhere
        changed = False
        for child, column, parent, _keeps in edges:
            for key, row in rows[child].items():
                target = (row[column],)
                if row[column] is None or target not in owners[parent]:
                    continue
                if target in foreign[parent]:
                    continue
                new = owners[parent][target] - owners[child].get(key, set())
                if new:
                    owners[child].setdefault(key, set()).update(new)
                    changed = True
                    if child == "users" and key[0] not in owners[child][key]:
                        foreign[child].add(key)
                    else:
                        foreign[child].discard(key)

    def owned(table: str, key: Key) -> bool:
        row = rows[table].get(key)
        if row is None:
            return False
        if table == "addresses":
            return row["user_id"] is not None
        return True  # every other row of the world leads to an account

    def parents(table: str, key: Key) -> list[tuple[str, Key, bool]]:
        row = rows[table][key]
        return [(p, (row[c],), keeps) for t, c, p, keeps in edges
                if t == table and row[c] is not None]

    for table, found in owners.items():
        for key in found:
            if any(keeps and target not in owners[p] and owned(p, target)
                   for p, target, keeps in parents(table, key)):
                foreign[table].add(key)
    changed = True
    while changed:
        changed = False
        for table, found in owners.items():
            for key in found:
                if key in foreign[table]:
                    continue
                ups = [(p, t, keeps) for p, t, keeps in parents(table, key) if t in owners[p]]
                matched = table == "users" and key[0] in erased
                if any(keeps and t in foreign[p] for p, t, keeps in ups) or (
                        not matched and ups and all(t in foreign[p] for p, t, _ in ups)):
                    foreign[table].add(key)
                    changed = True
    shared: dict[str, set[Key]] = defaultdict(set)
    for table, keys in foreign.items():
        for key in keys:
            shared[table].add(key)
            for p, target, keeps in parents(table, key):
                if keeps and target in owners[p]:
                    shared[p].add(target)
    pinned: dict[str, set[Key]] = defaultdict(set)
    stack = [(t, k) for t, ks in shared.items() for k in ks]
    while stack:
        table, key = stack.pop()
        for p, target, keeps in parents(table, key):
            if keeps and target in owners[p] and target not in shared[p] | pinned[p]:
                pinned[p].add(target)
                stack.append((p, target))
    kept = {t: shared[t] | (pinned[t] if t in DELETING else set()) for t in tables}
    return {t: set(owners[t]) for t in tables}, kept


def assert_as_the_rules_say(world: World, erased: set[int], before: dict[str, Any],
                            after: dict[str, Any]) -> None:
    found, kept = rules(world, erased)
    for table, rows in before.items():
        for key, row in rows.items():
            homes = world.homes[table][key]
            either_end = table in sharedworld.EITHER_END
            theirs = not (homes & erased) if either_end else not homes <= erased
            if theirs or key not in found[table] or key in kept[table]:
                # Nothing of anyone else is touched: byte-identical.
                assert after[table].get(key) == row, (table, key, homes)
                continue
            if table in DELETING:
                assert key not in after[table], (table, key)
            elif table == "users":
                new = after[table][key]
                assert is_pseudonym(new["email"]) and is_pseudonym(new["phone"]), key
                assert new["last_ip"] is None and new["nickname"] is None and new["id"] == key[0]
            else:  # orders: kept for tax law, the contact details gone
                new = after[table][key]
                assert new["note"] is None and new["address_id"] is None
                assert (new["amount"], new["user_id"]) == (row["amount"], row["user_id"])
    assert {t: set(r) for t, r in after.items()} == {
        t: set(before[t]) - (found[t] - kept[t] if t in DELETING else set()) for t in before
    }


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n_users=st.integers(2, 12), data=st.data())
def test_property_shared_rows_of_anyone_outside_the_batch_stay_byte_identical(
    db_url: str, seed: int, n_users: int, data: st.DataObject
) -> None:
    world = sharedworld.generate(random.Random(seed), n_users)
    connector = build(db_url, world)
    try:
        chosen = data.draw(st.sets(st.integers(1, n_users), min_size=1, max_size=n_users))
        kinds = [IdentityType.EMAIL, IdentityType.PHONE, IdentityType.USER_ID]
        subjects = [world.subject(uid, f"r{uid}", data.draw(st.sampled_from(kinds)))
                    for uid in sorted(chosen)]
        proven = resolved(connector, subjects)  # verification looks for all of them
        before = sharedworld.snapshot(connector.engine)
        outcomes = connector.erase(subjects, None, keys_for(subjects))
        after = sharedworld.snapshot(connector.engine)
        assert_as_the_rules_say(world, set(chosen), before, after)
        # Idempotent, and proven: a second erase changes nothing, verification finds
        # nothing left, and what stays is reported as retained.
        connector.erase(subjects, None, keys_for(subjects))
        assert sharedworld.snapshot(connector.engine) == after
        verified = connector.verify(proven, None)
        assert all(o.total("remaining") == 0 for o in verified.values())
        _, kept = rules(world, set(chosen))
        if any(kept.values()):
            reasons = {r for o in outcomes.values() for p in o.parts.values()
                       for r in p.retain_reasons}
            assert SHARED_REASON in reasons
    finally:
        connector.dispose()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n_users=st.integers(2, 12), data=st.data())
def test_property_rows_deleted_unread_are_the_rows_a_read_finds(
    db_url: str, seed: int, n_users: int, data: st.DataObject
) -> None:
    """Erasure deletes the rows of the leaf tables (`Locator.unread`: likes, notes) by
    the parent rows they point at, without reading them first (`DELETE … RETURNING`): the
    data it leaves and every request's counts are those of reading them first."""
    world = sharedworld.generate(random.Random(seed), n_users)
    chosen = data.draw(st.sets(st.integers(1, n_users), min_size=1, max_size=n_users))
    kinds = [IdentityType.EMAIL, IdentityType.PHONE, IdentityType.USER_ID]
    subjects = [world.subject(uid, f"r{uid}", data.draw(st.sampled_from(kinds)))
                for uid in sorted(chosen)]
    keys = keys_for(subjects)  # the same pseudonyms both ways
    results = []
    for returning in (False, True):
        connector = build(db_url, world)  # loaded afresh
        try:
            assert connector.locator.unread == {"likes", "notes"}
            connector.delete_returning = returning
            outcomes = connector.erase(subjects, None, keys)
            counts = {rid: {t: (p.found, p.deleted, p.anonymized, p.retained, p.remaining,
                                sorted(p.retain_reasons)) for t, p in o.parts.items()}
                      for rid, o in outcomes.items()}
            results.append((sharedworld.snapshot(connector.engine), counts))
        finally:
            connector.dispose()
    assert results[1] == results[0]


def test_a_like_of_a_photo_kept_for_someone_else_is_kept_and_counted(db_url: str) -> None:
    """A photo found for the subject that turns out to be someone else's too (its album's
    cover is another person's photo) keeps its likes, unread: counted, retained."""
    w = World()
    for uid in (1, 2):
        w.add("users", {"id": uid, "email": f"user{uid}@example.com",
                        "phone": f"1380013{uid:04d}", "last_ip": f"203.0.113.{uid}",
                        "referrer_id": None, "nickname": f"n{uid}"}, {uid})
    w.add("albums", {"id": 400, "user_id": 1, "cover_photo_id": 502}, {1, 2})
    w.add("photos", {"id": 501, "album_id": 400, "caption": "1's cat"}, {1})
    w.add("albums", {"id": 401, "user_id": 2, "cover_photo_id": None}, {2})
    w.add("photos", {"id": 502, "album_id": 401, "caption": "2's beach"}, {1, 2})
    w.add("likes", {"id": 600, "photo_id": 501}, {1})
    w.add("likes", {"id": 601, "photo_id": 501}, {1})
    w.add("likes", {"id": 602, "photo_id": 502}, {2})
    w.add("notes", {"id": 700, "user_id": 1, "body": "mine"}, {1})
    w.add("notes", {"id": 701, "user_id": 2, "body": "theirs"}, {2})
    connector = build(db_url, w)
    try:
        subject = w.subject(1, "r1")
        before = sharedworld.snapshot(connector.engine)
        outcome = connector.erase([subject], None, keys_for([subject]))["r1"]
        after = sharedworld.snapshot(connector.engine)
        assert after["likes"] == before["likes"]  # the album, so its photo, is kept
        likes = outcome.parts["likes"]
        assert (likes.found, likes.deleted, likes.retained) == (2, 0, 2)
        assert likes.retain_reasons == [SHARED_REASON]
        notes = outcome.parts["notes"]
        assert (notes.found, notes.deleted, notes.retained) == (1, 1, 0)
        assert set(after["notes"]) == {(701,)}
        assert all(o.total("remaining") == 0
                   for o in connector.verify([subject], None).values())
    finally:
        connector.dispose()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n_users=st.integers(2, 10), data=st.data())
def test_property_discovery_never_learns_an_identity_that_reaches_someone_else(
    db_url: str, seed: int, n_users: int, data: st.DataObject
) -> None:
    world = sharedworld.generate(random.Random(seed), n_users)
    connector = build(db_url, world)
    try:
        uid = data.draw(st.integers(1, n_users))
        found = connector.discover([world.subject(uid, "r")])["r"].found
        rows_of_others = {
            (t, World.key(t, r)) for t in world.rows for r in world.rows[t]
            if world.homes[t][World.key(t, r)] - {uid}
        }
        for identity in found:
            probe = Subject(request_id="p", phone_region="CN", identities=(identity,))
            with connector.engine.connect() as conn:
                located = connector.locate(conn, [probe])
            # The identity, searched alone, matches no row of anyone else.
            for table, matched in located.matches.items():
                for key in matched:
                    assert (table, key) not in rows_of_others, (identity.type, table, key)
    finally:
        connector.dispose()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n_users=st.integers(2, 10), data=st.data())
def test_property_discovery_reads_only_what_decides_it_and_learns_the_same(
    db_url: str, seed: int, n_users: int, data: st.DataObject
) -> None:
    """Discovery looks only at the tables that hold identities and those they point at
    (`Locator.identity_tables`): what it learns and withholds is what a look at every
    table gives, whoever shares what."""
    world = sharedworld.generate(random.Random(seed), n_users)
    connector = build(db_url, world)
    try:
        chosen = data.draw(st.sets(st.integers(1, n_users), min_size=1, max_size=n_users))
        kinds = [IdentityType.EMAIL, IdentityType.PHONE, IdentityType.USER_ID, IdentityType.IP]
        subjects = [world.subject(uid, f"r{uid}", data.draw(st.sampled_from(kinds)))
                    for uid in sorted(chosen)]
        narrow = connector.discover(subjects)
        assert connector.locator.identity_tables < set(connector.system.tables)
        connector.locator.identity_tables = frozenset(connector.system.tables)
        assert connector.discover(subjects) == narrow
    finally:
        connector.dispose()


@pytest.mark.parametrize("seed", [3, 17])
def test_cost_does_not_grow_with_shared_rows_per_request(db_url: str, seed: int) -> None:
    """The sharing rules add a bounded number of statements per table, whatever the batch
    (statements counted, not timed)."""
    counts = []
    for n in (6, 24):
        world = sharedworld.generate(random.Random(seed), n)
        connector = build(db_url, world)
        statements = 0

        def count(*_: Any) -> None:
            nonlocal statements
            statements += 1

        sa.event.listen(connector.engine, "before_cursor_execute", count)
        subjects = [world.subject(u, f"r{u}") for u in range(1, n + 1)]
        connector.verify(subjects, None)
        sa.event.remove(connector.engine, "before_cursor_execute", count)
        counts.append(statements)
        connector.dispose()
    assert counts[1] <= counts[0] + 10, counts
