"""The SQL connector on SQLite and PostgreSQL: traversal, erasure precision, idempotence,
verification, cycles, scope, and the property that nothing of anyone else is touched."""

from __future__ import annotations

import random
from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.sql import SchemaMismatch, SqlConnector, cyclic_references, erase_order
from dsrflow.crypto import Pseudonymizer, is_pseudonym, new_key
from dsrflow.identities import Identity, IdentityType, Subject
from tests import sqlworld


def make_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    if url.startswith("sqlite"):
        # Enforce foreign keys on SQLite too, so an erasure order bug fails here as well.
        sa.event.listen(engine, "connect", lambda c, _: c.execute("PRAGMA foreign_keys=ON"))
    return engine


def build(url: str, seed: int = 1, n_users: int = 6) -> tuple[SqlConnector, sqlworld.World]:
    engine = make_engine(url)
    world = sqlworld.generate(random.Random(seed), n_users)
    sqlworld.load(engine, world)
    system = sqlworld.datamap().sql("db")
    return SqlConnector("db", system, engine), world


def keys_for(subjects: list[Subject]) -> dict[str, Pseudonymizer]:
    return {s.request_id: Pseudonymizer(new_key()) for s in subjects}


def owned_by(world: sqlworld.World, table: str, uids: set[int]) -> set[tuple[Any, ...]]:
    return {k for k, who in world.owners.get(table, {}).items() if who & uids}


def test_erase_order_puts_children_first_and_finds_the_cycle() -> None:
    system = sqlworld.datamap().sql("db")
    order = erase_order(system)
    assert order.index("post_tags") < order.index("posts") < order.index("users")
    assert order.index("follows") < order.index("users")
    assert order.index("orders") < order.index("users")
    cyclic = {(child, tuple(ref.columns)) for child, ref in cyclic_references(system)}
    assert cyclic == {("albums", ("cover_photo_id",)), ("photos", ("album_id",))}


def test_locate_follows_references_across_hops_and_both_ways(db_url: str) -> None:
    connector, world = build(db_url)
    subject = world.subject(2, "r2")
    with connector.engine.connect() as conn:
        located = connector.locate(conn, [subject])
    for table in sqlworld.metadata.tables:
        assert set(located.owners[table]) == owned_by(world, table, {2}), table


@pytest.mark.parametrize("by", [IdentityType.EMAIL, IdentityType.PHONE, IdentityType.USER_ID])
def test_identities_match_however_the_database_spelled_them(db_url: str, by: IdentityType) -> None:
    connector, world = build(db_url)
    # User 3 has a '+86…' phone and a mixed-case email in the database; the subject's
    # identity is normalized (lower-case, E.164).
    subject = world.subject(3, "r3", by)
    with connector.engine.connect() as conn:
        located = connector.locate(conn, [subject])
    assert set(located.owners["users"]) == {(3,)}


def test_erase_deletes_and_anonymizes_the_subject_and_nobody_else(db_url: str) -> None:
    connector, world = build(db_url, seed=5, n_users=8)
    buyer = min(o["user_id"] for o in world.rows["orders"])
    other = next(u for u in range(1, 9) if u != buyer)
    before = sqlworld.snapshot(connector.engine)
    subjects = [world.subject(buyer, "r1"), world.subject(other, "r4", IdentityType.PHONE)]
    outcomes = connector.erase(subjects, None, keys_for(subjects))
    after = sqlworld.snapshot(connector.engine)
    _assert_precise(world, before, after, {buyer, other})

    r1 = outcomes["r1"]
    assert r1.part("posts").deleted == len(owned_by(world, "posts", {buyer}))
    assert r1.part("users").anonymized == 1
    assert r1.part("orders").retained == len(owned_by(world, "orders", {buyer})) > 0
    assert r1.part("orders").retain_reasons == ["tax law: 3 years"]
    assert all(len(h) == 64 for p in r1.parts.values() for h in p.statements)

    verified = connector.verify(subjects, None)
    assert all(o.total("remaining") == 0 for o in verified.values())


def test_erase_is_idempotent(db_url: str) -> None:
    connector, world = build(db_url, seed=9)
    subjects = [world.subject(2, "r2", IdentityType.USER_ID)]
    keys = keys_for(subjects)
    connector.erase(subjects, None, keys)
    first = sqlworld.snapshot(connector.engine)
    again = connector.erase(subjects, None, keys)
    assert sqlworld.snapshot(connector.engine) == first
    assert again["r2"].total("deleted") == 0
    assert again["r2"].total("anonymized") == 0
    assert connector.verify(subjects, None)["r2"].total("remaining") == 0


def test_pseudonyms_are_keyed_and_consistent_within_a_request(db_url: str) -> None:
    connector, world = build(db_url, seed=3)
    subjects = [world.subject(1, "r1", IdentityType.USER_ID)]
    connector.erase(subjects, None, keys_for(subjects))
    with connector.engine.connect() as conn:
        user = conn.execute(sa.select(sqlworld.users).where(sqlworld.users.c.id == 1)).one()
        orders = conn.execute(
            sa.select(sqlworld.orders.c.buyer_phone).where(sqlworld.orders.c.user_id == 1)
        ).scalars().all()
    assert is_pseudonym(user.email) and is_pseudonym(user.phone)
    assert user.nickname is None
    assert user.birthday == date(world.user(1)["birthday"].year, 1, 1)
    # The same phone number maps to the same pseudonym in every table of the request.
    assert all(is_pseudonym(p) for p in orders)
    assert len(set(orders)) <= 1


def test_scope_limits_erasure_to_the_withdrawn_categories(db_url: str) -> None:
    connector, world = build(db_url, seed=4)
    before = sqlworld.snapshot(connector.engine)
    subjects = [world.subject(2, "r2")]
    connector.erase(subjects, frozenset({"media"}), keys_for(subjects))
    after = sqlworld.snapshot(connector.engine)
    for table in ("albums", "photos"):
        assert not (set(after[table]) & owned_by(world, table, {2}))
    for table in ("users", "posts", "post_tags", "devices", "orders", "follows"):
        assert after[table] == before[table], table


def test_collect_returns_the_subjects_rows_per_table(db_url: str) -> None:
    connector, world = build(db_url, seed=6)
    records = connector.collect([world.subject(5, "r5")], None)["r5"]
    assert [r["email"] for r in records["users"]] == [world.user(5)["email"]]
    assert len(records.get("posts", [])) == len(owned_by(world, "posts", {5}))
    assert {r["id"] for r in records.get("orders", [])} == {
        k[0] for k in owned_by(world, "orders", {5})
    }


def test_rectify_changes_only_the_named_field_of_the_subject(db_url: str) -> None:
    connector, world = build(db_url, seed=2)
    before = sqlworld.snapshot(connector.engine)
    connector.rectify(world.subject(3, "r3"), {"users.nickname": "corrected"})
    after = sqlworld.snapshot(connector.engine)
    assert after["users"][(3,)]["nickname"] == "corrected"
    after["users"][(3,)]["nickname"] = before["users"][(3,)]["nickname"]
    assert after == before


def test_unknown_subject_finds_nothing_and_changes_nothing(db_url: str) -> None:
    connector, _ = build(db_url)
    before = sqlworld.snapshot(connector.engine)
    ghost = Subject(
        request_id="g", identities=(Identity(type=IdentityType.EMAIL, value="nobody@x.org"),)
    )
    outcome = connector.erase([ghost], None, keys_for([ghost]))
    assert outcome["g"].total("found") == 0
    assert sqlworld.snapshot(connector.engine) == before


def test_schema_mismatch_names_the_field(tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    sqlworld.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE post_tags"))
    with pytest.raises(SchemaMismatch, match=r"systems\.db\.tables\.post_tags"):
        SqlConnector("db", sqlworld.datamap().sql("db"), engine)


def _assert_precise(
    world: sqlworld.World,
    before: dict[str, dict[tuple[Any, ...], dict[str, Any]]],
    after: dict[str, dict[tuple[Any, ...], dict[str, Any]]],
    subjects: set[int],
) -> None:
    """Every row of everyone else is byte-identical; the subjects keep only retained rows,
    with their personal columns erased."""
    for table, rows in before.items():
        mine = owned_by(world, table, subjects)
        for key, row in rows.items():
            if key not in mine:
                assert after[table].get(key) == row, (table, key)
        left = set(after[table]) & mine
        if table == "users":
            for key in left:
                assert is_pseudonym(after[table][key]["email"])
                assert is_pseudonym(after[table][key]["phone"])
                assert after[table][key]["nickname"] is None
        elif table == "orders":
            assert left == mine
            for key in left:
                assert is_pseudonym(after[table][key]["buyer_phone"])
                assert after[table][key]["amount"] == rows[key]["amount"]
        else:
            assert not left, (table, left)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10**6),
    n_users=st.integers(2, 9),
    data=st.data(),
)
def test_property_erasure_touches_nothing_of_anyone_else(
    db_url: str, seed: int, n_users: int, data: st.DataObject
) -> None:
    connector, world = build(db_url, seed=seed, n_users=n_users)
    try:
        chosen = data.draw(st.sets(st.integers(1, n_users), min_size=1, max_size=n_users))
        kinds = [IdentityType.EMAIL, IdentityType.PHONE, IdentityType.USER_ID]
        subjects = [
            world.subject(uid, f"r{uid}", data.draw(st.sampled_from(kinds))) for uid in chosen
        ]
        before = sqlworld.snapshot(connector.engine)
        connector.erase(subjects, None, keys_for(subjects))
        _assert_precise(world, before, sqlworld.snapshot(connector.engine), set(chosen))
        assert all(o.total("remaining") == 0 for o in connector.verify(subjects, None).values())
    finally:
        connector.dispose()


def test_discover_learns_every_identity_the_account_holds(db_url: str) -> None:
    connector, world = build(db_url, seed=8)
    found = connector.discover([world.subject(3, "r3"), world.subject(5, "r5",
                                                                      IdentityType.PHONE)])

    def expected(uid: int, given: IdentityType) -> set[Identity]:
        user = world.user(uid)
        every = {
            Identity(type=IdentityType.USER_ID, value=str(uid)),
            Identity(type=IdentityType.EMAIL, value=user["email"]),
            Identity.read(IdentityType.PHONE, user["phone"], "CN"),
            *(Identity(type=IdentityType.DEVICE_ID, value=d["device_id"])
              for d in world.rows.get("devices", []) if d["user_id"] == uid),
        }
        return {i for i in every if i.type is not given}

    assert found["r3"].found == expected(3, IdentityType.EMAIL)
    assert found["r5"].found == expected(5, IdentityType.PHONE)
    assert not found["r3"].withheld and not found["r3"].unreadable


def test_column_values_reads_a_column_of_the_subjects_rows(db_url: str) -> None:
    connector, world = build(db_url, seed=8)
    buyer = min(o["user_id"] for o in world.rows["orders"])
    values = connector.column_values([world.subject(buyer, "r")], "orders", "id")
    assert sorted(values["r"]) == sorted(
        o["id"] for o in world.rows["orders"] if o["user_id"] == buyer
    )


def _connector_with_region(url: str, region: str | None, seed: int = 8) -> tuple[
    SqlConnector, sqlworld.World
]:
    engine = make_engine(url)
    world = sqlworld.generate(random.Random(seed), 6)
    sqlworld.load(engine, world)
    doc = {**sqlworld.DATAMAP_DOC["systems"]["db"], "phone_region": region}
    system = sqlworld.parse_datamap({**sqlworld.DATAMAP_DOC, "systems": {"db": doc}}).sql("db")
    return SqlConnector("db", system, engine), world


def test_a_systems_own_region_reads_its_national_numbers_for_a_subject_without_one(
    db_url: str,
) -> None:
    # A GDPR ticket has no region of its own; a Chinese app's database writes numbers as
    # China does. The system's region says how to read them.
    e164 = "+86" + sqlworld.phone_for(1)  # stored nationally for user 1
    subject = Subject(request_id="r", identities=(Identity(type=IdentityType.PHONE,
                                                           value=e164),))
    plain, _ = _connector_with_region(db_url, None)
    with plain.engine.connect() as conn:
        assert not plain.locate(conn, [subject]).owners["users"]
    plain.dispose()
    chinese, _ = _connector_with_region(db_url, "CN")
    with chinese.engine.connect() as conn:
        assert set(chinese.locate(conn, [subject]).owners["users"]) == {(1,)}
    # ...and discovery reads the account's stored number in that region too.
    by_email = sqlworld.World.subject(_world_of(chinese), 1, "r", IdentityType.EMAIL)
    found = chinese.discover([by_email.model_copy(update={"phone_region": None})])["r"]
    assert Identity(type=IdentityType.PHONE, value=e164) in found.found
    chinese.dispose()


def _world_of(connector: SqlConnector) -> sqlworld.World:
    return sqlworld.generate(random.Random(8), 6)


def test_a_london_number_never_matches_a_guangzhou_number_written_nationally(
    db_url: str,
) -> None:
    connector, _ = _connector_with_region(db_url, "CN")
    with connector.engine.begin() as conn:
        conn.execute(sqlworld.users.insert().values(
            id=99, email="gz@example.com", phone="02079460018", nickname="gz"))
    london = Subject(request_id="r", phone_region="GB", identities=(
        Identity(type=IdentityType.PHONE, value="+442079460018"),))
    guangzhou = Subject(request_id="g", phone_region="CN", identities=(
        Identity(type=IdentityType.PHONE, value="+862079460018"),))
    with connector.engine.connect() as conn:
        assert not connector.locate(conn, [london]).owners["users"]
        assert set(connector.locate(conn, [guangzhou]).owners["users"]) == {(99,)}
    connector.dispose()
