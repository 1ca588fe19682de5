"""The demo world hangs together: schema, data map, generator, subjects and tickets agree."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dsrflow.datamap import Action, DataMap, ObjectsSystem, SqlSystem, load_datamap
from dsrflow.identities import Identity, IdentityType, phone_variants
from dsrflow.model import Regime, RequestType
from dsrflow.tickets import Rejection, Ticket, parse_ticket
from examples.wishe import schema
from examples.wishe.generate import World, build_world
from examples.wishe.subjects import SUBJECTS, by_id

WISHE = Path(__file__).resolve().parent.parent / "examples" / "wishe"
TICKETS = WISHE / "tickets"
# The PIPL business-day calendar for 2027 is not published: a ticket received later than
# this would have a deadline nobody can compute.
LAST_RECEIVED = datetime.fromisoformat("2026-11-28T00:00:00+08:00")
# Foreign keys that are deliberately not data-map references (see datamap.yaml).
NOT_OWNERSHIP = {("comments", ("upload_id",), "uploads")}


@pytest.fixture(scope="module")
def datamap() -> DataMap:
    return load_datamap(WISHE / "datamap.yaml")


@pytest.fixture(scope="module")
def userdb(datamap: DataMap) -> SqlSystem:
    return datamap.sql("userdb")


@pytest.fixture(scope="module")
def sqlite_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, sa.Engine]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('wishe') / 'wishe.db'}"
    world = build_world(url)
    engine = sa.create_engine(url)
    yield world, engine
    engine.dispose()


def valid_ticket_files() -> list[Path]:
    return sorted(p for p in TICKETS.glob("*.json") if not p.name.startswith("invalid-"))


def parsed(path: Path) -> Ticket:
    ticket = parse_ticket(path.read_bytes())
    assert isinstance(ticket, Ticket), f"{path.name}: {ticket}"
    return ticket


def dump(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in conn.execute(sa.select(t).order_by(*t.primary_key))]
            for t in schema.metadata.sorted_tables
        }


# -- data map against the schema ---------------------------------------------------------------
def test_datamap_is_versioned_and_reads_its_url_from_the_environment(datamap: DataMap) -> None:
    assert datamap.version == "wishe-2026.11"
    assert datamap.policy_version == "2026-11"
    userdb, media = datamap.systems["userdb"], datamap.systems["media"]
    # Where each system is comes from the environment, so the map works for any deployment.
    assert isinstance(userdb, SqlSystem) and userdb.url_env == "WISHE_DB_URL"
    assert isinstance(media, ObjectsSystem) and media.endpoint_url_env == "WISHE_S3_ENDPOINT"


def test_datamap_maps_every_column_of_every_table_and_nothing_more(userdb: SqlSystem) -> None:
    in_schema = {t.name: [c.name for c in t.columns] for t in schema.metadata.sorted_tables}
    in_map = {name: list(t.columns) for name, t in userdb.tables.items()}
    assert set(in_map) == set(in_schema)
    for name, columns in in_schema.items():
        assert sorted(in_map[name]) == sorted(columns), name


def test_datamap_keys_and_references_match_the_schema(userdb: SqlSystem) -> None:
    foreign_keys = set()
    for table in schema.metadata.sorted_tables:
        mapped = userdb.tables[table.name]
        assert mapped.primary_key == [c.name for c in table.primary_key.columns], table.name
        for fk in table.foreign_key_constraints:
            foreign_keys.add((table.name, tuple(fk.column_keys), fk.referred_table.name))
    references = {
        (name, tuple(ref.columns), ref.table)
        for name, t in userdb.tables.items()
        for ref in t.references
    }
    assert references <= foreign_keys
    assert foreign_keys - references == NOT_OWNERSHIP


def test_identities_are_the_account_holders_own_columns(userdb: SqlSystem) -> None:
    declared = {
        (name, i.column, i.type) for name, t in userdb.tables.items() for i in t.identities
    }
    assert declared == {
        ("users", "id", IdentityType.USER_ID),
        ("users", "email", IdentityType.EMAIL),
        ("users", "phone", IdentityType.PHONE),
        ("trusted_devices", "device_id", IdentityType.DEVICE_ID),
        ("third_party_logins", "openid", IdentityType.THIRD_PARTY),
    }
    assert userdb.tables["users"].restriction_column == "restricted_at"


def test_erasure_actions_fit_the_columns(userdb: SqlSystem) -> None:
    """A pseudonym or redaction marker must fit where it is written; a tombstone table
    that is retained cannot also be deleted."""
    pseudonym_length = len("pn_") + 24
    for table in schema.metadata.sorted_tables:
        for name, col in userdb.tables[table.name].columns.items():
            if col.action in (Action.PSEUDONYMIZE, Action.REDACT):
                width = getattr(table.c[name].type, "length", None)
                needed = pseudonym_length if col.action is Action.PSEUDONYMIZE else len(
                    col.redact_with
                )
                assert width is None or width >= needed, f"{table.name}.{name}"
    assert not userdb.tables["users"].deletes_rows(None)
    assert not userdb.tables["orders"].deletes_rows(None)
    assert userdb.tables["location_history"].deletes_rows(frozenset({"location"}))
    assert userdb.tables["contacts"].deletes_rows(frozenset({"contacts"}))
    assert not userdb.tables["users"].deletes_rows(frozenset({"location", "contacts"}))


# -- generator ---------------------------------------------------------------------------------
def test_generator_builds_with_intact_foreign_keys(tmp_path: Path) -> None:
    # (Not timed: a wall-clock bound fails on a loaded machine and proves nothing.)
    url = f"sqlite:///{tmp_path / 'w.db'}"
    world = build_world(url, users=200, seed=7)
    assert world.users == 200 and world.seed == 7 and world.subjects == SUBJECTS
    assert "sqlite" not in repr(world)  # the URL may carry a password: not in reprs
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
            for table, count in world.counts.items():
                assert conn.execute(
                    sa.select(sa.func.count()).select_from(schema.metadata.tables[table])
                ).scalar_one() == count
    finally:
        engine.dispose()
    assert world.counts["users"] == 200
    assert all(world.counts[t] > 0 for t in schema.metadata.tables)


def test_generator_is_deterministic(tmp_path: Path) -> None:
    def rows(name: str, seed: int) -> dict[str, list[tuple[Any, ...]]]:
        url = f"sqlite:///{tmp_path / name}"
        build_world(url, users=40, seed=seed)
        engine = sa.create_engine(url)
        try:
            return dump(engine)
        finally:
            engine.dispose()

    first, again, other = rows("a.db", 11), rows("b.db", 11), rows("c.db", 12)
    assert first == again
    assert first != other
    # The demo subjects' identities are fixed whatever the seed.
    k = len(SUBJECTS)
    assert [r[:3] for r in first["users"][:k]] == [r[:3] for r in other["users"][:k]]
    assert [r[:3] for r in first["users"][:k]] == [(s.user_id, s.phone, s.email) for s in SUBJECTS]


def test_generator_rebuilds_in_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    build_world(url, users=20)
    world = build_world(url, users=20)
    assert world.counts["users"] == 20


def test_generator_builds_on_every_database(db_url: str) -> None:
    world = build_world(db_url, users=30, seed=3)
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            users = schema.users
            row = conn.execute(sa.select(users).where(users.c.id == 1)).one()
            assert row.email == SUBJECTS[0].email and row.phone == SUBJECTS[0].phone
            assert conn.execute(
                sa.select(sa.func.count()).select_from(schema.follows)
            ).scalar_one() == world.counts["follows"]
    finally:
        engine.dispose()


def test_demo_subjects_have_rows_everywhere_and_are_entangled(
    sqlite_world: tuple[World, sa.Engine],
) -> None:
    _, engine = sqlite_world
    t = schema.metadata.tables
    with engine.connect() as conn:
        for subject in SUBJECTS:
            uid = subject.user_id
            for name, table in t.items():
                if name == "users":
                    continue
                if name == "follows":
                    for column in ("follower_id", "followee_id"):
                        n = conn.execute(
                            sa.select(sa.func.count()).where(table.c[column] == uid)
                        ).scalar_one()
                        assert n > 0, f"{subject.name} {column}"
                    continue
                n = conn.execute(
                    sa.select(sa.func.count()).where(table.c.user_id == uid)
                ).scalar_one()
                assert n > 0, f"{subject.name} has no {name}"
            # Somebody else commented on their upload, holds them in an address book and
            # sent them something: rows an erasure of theirs must not touch.
            assert conn.execute(
                sa.select(sa.func.count())
                .select_from(t["comments"].join(t["uploads"]))
                .where(t["uploads"].c.user_id == uid, t["comments"].c.user_id != uid)
            ).scalar_one() > 0
            national = subject.phone_e164[3:]
            others_contacts = conn.execute(
                sa.select(t["contacts"].c.contact_phone).where(t["contacts"].c.user_id != uid)
            ).scalars()
            assert any(re.sub(r"\D", "", p or "").endswith(national) for p in others_contacts)
            assert conn.execute(
                sa.select(sa.func.count()).where(
                    t["orders"].c.user_id != uid, t["orders"].c.buyer_name == subject.name
                )
            ).scalar_one() > 0


# -- tickets -----------------------------------------------------------------------------------
def test_ticket_files_are_named_after_their_type() -> None:
    files = valid_ticket_files()
    assert len(files) >= 9
    for path in files:
        match = re.fullmatch(r"\d\d-([a-z_]+)\.json", path.name)
        assert match, path.name
        assert json.loads(path.read_text())["type"] == match.group(1)


def test_valid_tickets_parse_and_cover_every_type_and_regime() -> None:
    tickets = [parsed(p) for p in valid_ticket_files()]
    assert {t.type for t in tickets} == set(RequestType)
    # uk_gdpr differs from gdpr only in its calendar and its clock, which test_sla and
    # test_extensions cover; the demo world has no UK subjects.
    assert {t.regime for t in tickets} == set(Regime) - {Regime.UK_GDPR}
    assert len({t.ticket_id for t in tickets}) == len(tickets)
    assert all(t.received_at < LAST_RECEIVED for t in tickets)
    scopes = {tuple(t.scope or ()) for t in tickets if t.type is RequestType.CONSENT_WITHDRAWAL}
    assert scopes == {("location",), ("contacts",)}
    rectification = next(t for t in tickets if t.type is RequestType.RECTIFICATION)
    assert rectification.corrections is not None
    assert "userdb.users.unit_name" in rectification.corrections
    unverified = [t for t in tickets if not t.verified]
    assert len(unverified) == 1 and unverified[0].verification is not None


def test_corrections_name_mapped_columns(datamap: DataMap) -> None:
    for path in valid_ticket_files():
        for target in parsed(path).corrections or {}:
            system, table, column = target.split(".")
            assert column in datamap.sql(system).tables[table].columns, target


def test_the_invalid_ticket_is_rejected_without_quoting_it() -> None:
    invalid = sorted(TICKETS.glob("invalid-*.json"))
    assert invalid
    for path in invalid:
        result = parse_ticket(path.read_bytes())
        assert isinstance(result, Rejection), path.name
        assert "type" in result.reason and "email" in result.reason
        assert "example.com" not in result.reason
        assert result.ticket_id is not None


def resolve(conn: sa.Connection, identity: Identity) -> set[int]:
    """The user ids an identity points at, matched the way the SQL connector matches."""
    t = schema.metadata.tables
    users = t["users"]
    match identity.type:
        case IdentityType.USER_ID:
            stmt = sa.select(users.c.id).where(users.c.id == int(identity.value))
        case IdentityType.EMAIL:
            stmt = sa.select(users.c.id).where(
                sa.func.lower(sa.func.trim(users.c.email)) == identity.value
            )
        case IdentityType.PHONE:
            stmt = sa.select(users.c.id).where(
                users.c.phone.in_(phone_variants(identity.value, "CN"))
            )
        case IdentityType.DEVICE_ID:
            devices = t["trusted_devices"]
            stmt = sa.select(devices.c.user_id).where(devices.c.device_id == identity.value)
        case IdentityType.THIRD_PARTY:
            provider, _, openid = identity.value.partition(":")
            logins = t["third_party_logins"]
            stmt = sa.select(logins.c.user_id).where(
                sa.func.lower(logins.c.provider) == provider, logins.c.openid == openid
            )
    return set(conn.execute(stmt).scalars())


def test_every_ticket_resolves_to_one_demo_subject(
    sqlite_world: tuple[World, sa.Engine],
) -> None:
    _, engine = sqlite_world
    erasing: dict[int, list[str]] = {}
    with engine.connect() as conn:
        for path in valid_ticket_files():
            ticket = parsed(path)
            found = {i.type: resolve(conn, i) for i in ticket.identities}
            owners = set().union(*found.values())
            assert len(owners) == 1 and all(found.values()), f"{path.name}: {found}"
            (uid,) = owners
            by_id(uid)  # a demo subject, not a random user
            # Child-table identities (device, third-party login) do not lead the connector
            # to the rest of the account; every ticket names the account itself too.
            assert found.keys() & {
                IdentityType.USER_ID, IdentityType.EMAIL, IdentityType.PHONE
            }, path.name
            if ticket.type.erases:
                erasing.setdefault(uid, []).append(path.name)
    assert all(len(names) == 1 for names in erasing.values()), erasing
