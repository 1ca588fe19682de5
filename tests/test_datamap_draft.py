"""`dsrflow datamap draft`: a draft from a live database always validates, finds the
subject's rows in every table it keeps, says what it left out, and never writes a password."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from dsrflow.datamap import parse_datamap
from dsrflow.datamap_draft import Draft, DraftError, draft, draft_datamap, to_yaml

# A small shop the drafter's rules were not written for: a subject table named
# `customers`, a reference the database does not declare (carts.customer_id), a table two
# hops away (cart_items), a lookup table (products), a table without a primary key
# (audit_log), a table pointing at customers twice (referrals), one with an ON DELETE SET
# NULL key (reviews.cart_id) and one nothing points at but an email column (newsletter).
SHOP = [
    """CREATE TABLE customers (
        id INTEGER PRIMARY KEY,
        email VARCHAR(320) NOT NULL UNIQUE,
        phone VARCHAR(20),
        full_name VARCHAR(128) NOT NULL,
        password_hash VARCHAR(255) NOT NULL,
        birth_date DATE,
        home_lat NUMERIC(9, 6),
        last_ip VARCHAR(45),
        loyalty_points INTEGER NOT NULL DEFAULT 0,
        created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE customer_addresses (
        id INTEGER PRIMARY KEY,
        customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
        street VARCHAR(200),
        city VARCHAR(100),
        recipient_phone VARCHAR(32))""",
    """CREATE TABLE products (sku VARCHAR(32) PRIMARY KEY, title VARCHAR(200),
        price NUMERIC(10, 2))""",
    """CREATE TABLE carts (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL,
        created_at TIMESTAMP)""",
    """CREATE TABLE cart_items (
        id INTEGER PRIMARY KEY,
        cart_id INTEGER NOT NULL REFERENCES carts(id),
        sku VARCHAR(32) REFERENCES products(sku),
        quantity INTEGER NOT NULL)""",
    """CREATE TABLE audit_log (logged_at TIMESTAMP, customer_id INTEGER, action TEXT)""",
    """CREATE TABLE referrals (
        id INTEGER PRIMARY KEY,
        referrer_id INTEGER NOT NULL REFERENCES customers(id),
        referee_id INTEGER NOT NULL REFERENCES customers(id),
        created_at TIMESTAMP)""",
    """CREATE TABLE reviews (
        id INTEGER PRIMARY KEY,
        customer_id INTEGER NOT NULL REFERENCES customers(id),
        cart_id INTEGER REFERENCES carts(id) ON DELETE SET NULL,
        body TEXT NOT NULL)""",
    """CREATE TABLE newsletter (id INTEGER PRIMARY KEY, email VARCHAR(320) NOT NULL)""",
]


def _create(url: str, statements: list[str]) -> str:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    engine.dispose()
    return url


def _sqlite(tmp_path: Path, statements: list[str]) -> str:
    return _create(f"sqlite:///{tmp_path / 'shop.db'}", statements)


def _warned(result: Draft, *words: str) -> bool:
    return any(all(w in warning for w in words) for warning in result.warnings)


def test_drafts_a_schema_it_has_never_seen(db_url: str) -> None:
    result = draft(_create(db_url, SHOP))
    system = parse_datamap(result.datamap).sql("userdb")
    tables = result.datamap["systems"]["userdb"]["tables"]

    customers = tables["customers"]
    assert {"type": "email", "column": "email"} in customers["identities"]
    assert {"type": "user_id", "column": "id"} in customers["identities"]
    assert {"type": "phone", "column": "phone"} in customers["identities"]
    cols = customers["columns"]
    assert cols["email"] == {"category": "contact", "action": "pseudonymize"}
    # Each personal column gets the first action its type and constraints allow.
    assert cols["phone"]["action"] == "redact"  # too narrow for a pseudonym
    assert cols["full_name"]["action"] == "redact"  # NOT NULL: cannot be nulled
    assert cols["password_hash"] == {"category": "security", "action": "redact"}
    assert cols["birth_date"] == {
        "category": "profile", "action": "generalize", "generalize": "year"}
    assert cols["home_lat"]["category"] == "location"
    assert cols["last_ip"]["generalize"] == "ipv4_24"
    for kept in ("id", "created_at", "loyalty_points"):
        assert cols[kept] == {"category": "non_personal", "action": "keep"}

    # Rows of every other table are deleted, under the category its name suggests.
    addresses = tables["customer_addresses"]
    assert {c["action"] for c in addresses["columns"].values()} == {"delete"}
    assert {c["category"] for c in addresses["columns"].values()} == {"contact"}
    assert "identities" not in addresses  # a recipient's phone is not the customer's

    assert tables["carts"]["references"] == [{"columns": ["customer_id"], "table": "customers"}]
    assert _warned(result, "carts", "customer_id", "no foreign key")
    assert tables["cart_items"]["references"] == [{"columns": ["cart_id"], "table": "carts"}]
    assert {"cart_items", "carts", "reviews", "referrals"} <= system.reachable_tables()

    assert tables["reviews"]["references"] == [{"columns": ["customer_id"], "table": "customers"}]
    assert _warned(result, "reviews", "SET NULL")
    assert len(tables["referrals"]["references"]) == 2
    assert _warned(result, "referrals", "referrer_id", "referee_id")
    assert tables["newsletter"]["identities"] == [{"type": "email", "column": "email"}]
    assert _warned(result, "newsletter", "identity (email)")

    assert "audit_log" not in tables
    assert _warned(result, "audit_log", "no primary key")
    assert "products" not in tables
    assert _warned(result, "products", "left out")


def test_yaml_round_trips(tmp_path: Path) -> None:
    result = draft(_sqlite(tmp_path, SHOP), system="shopdb", today=date(2025, 3, 14))
    text = to_yaml(result)

    header, _, body = text.partition("\n\n")
    assert header.startswith(
        f"# Drafted by dsrflow datamap draft from sqlite:///{tmp_path / 'shop.db'} on 2025-03-14."
        " Review every category and action before use."
    )
    assert all(line.startswith("#") for line in header.splitlines())
    assert "# - tables.audit_log: no primary key" in header
    loaded = yaml.safe_load(text)
    assert loaded == result.datamap
    datamap = parse_datamap(loaded, "draft.yaml")
    assert datamap.version == "draft-2025-03-14"
    assert datamap.policy_version == "unknown"
    assert set(datamap.systems) == {"shopdb"}
    # One line per column keeps a large map reviewable.
    assert "      email: {category: contact, action: pseudonymize}" in body


def test_a_password_never_appears(postgres_url: str) -> None:
    # The test server trusts every connection, so any password gets in.
    _create(postgres_url, SHOP)
    with_password = postgres_url.replace("postgres@", "postgres:hunter2@", 1)
    assert "hunter2" in with_password
    result = draft(with_password + "?application_name=draft&sslpassword=hunter2")

    text = to_yaml(result)
    assert "hunter2" not in text
    assert "hunter2" not in repr(result)
    assert "postgres@127.0.0.1" in text.splitlines()[0]
    system = result.datamap["systems"]["userdb"]
    assert system["url_env"] == "USERDB_URL"
    assert "url" not in system
    parse_datamap(yaml.safe_load(text))

    named = draft(with_password, system="shop", url_env="SHOP_DB")
    assert named.datamap["systems"]["shop"]["url_env"] == "SHOP_DB"


def test_a_url_without_a_password_is_written_as_is(tmp_path: Path) -> None:
    url = _sqlite(tmp_path, SHOP)
    assert draft_datamap(url)["systems"]["userdb"]["url"] == url
    assert draft_datamap(url, url_env="SHOP_DB")["systems"]["userdb"] == {
        "kind": "sql", "url_env": "SHOP_DB", "tables": draft_datamap(url)["systems"]["userdb"][
            "tables"]}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:hunter2@127.0.0.1:1/shop?connect_timeout=2",  # refused
        "not a url, app:hunter2@",
    ],
)
def test_errors_do_not_quote_the_password(url: str) -> None:
    with pytest.raises(DraftError) as caught:
        draft(url)
    assert "hunter2" not in str(caught.value)


def test_a_mistyped_sqlite_path_is_an_error_not_a_new_file(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(DraftError, match="no SQLite database"):
        draft(f"sqlite:///{missing}")
    assert not missing.exists()


def test_an_empty_database_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DraftError, match="nothing"):
        draft(_sqlite(tmp_path, ["CREATE TABLE things (id INTEGER PRIMARY KEY, n INTEGER)"]))


def test_the_most_referenced_table_is_the_subject_when_no_name_says_so(tmp_path: Path) -> None:
    result = draft(_sqlite(tmp_path, [
        "CREATE TABLE people (pid INTEGER PRIMARY KEY, email TEXT, nickname TEXT)",
        "CREATE TABLE posts (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES people(pid), "
        "body TEXT)",
        "CREATE TABLE likes (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES people(pid), "
        "post_id INTEGER REFERENCES posts(id))",
    ]))
    tables = parse_datamap(result.datamap).sql("userdb").tables
    assert tables["people"].identities[0].type == "user_id"
    assert not tables["people"].deletes_rows(None)
    assert tables["posts"].deletes_rows(None)
    assert _warned(result, "people", "2 foreign key")


def test_odd_names_are_left_out_with_a_warning(tmp_path: Path) -> None:
    result = draft(_sqlite(tmp_path, [
        'CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, "home\naddress" TEXT)',
        'CREATE TABLE "my table" (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id))',
    ]))
    tables = result.datamap["systems"]["userdb"]["tables"]
    assert set(tables) == {"users"}
    assert set(tables["users"]["columns"]) == {"id", "email"}
    assert _warned(result, "'my table'")
    assert _warned(result, "'home\\naddress'")
    text = to_yaml(result)
    assert yaml.safe_load(text) == result.datamap  # a line break in a name stays in its comment


def test_drafts_the_wishe_database(tmp_path: Path) -> None:
    from examples.wishe.schema import metadata

    url = f"sqlite:///{tmp_path / 'wishe.db'}"
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    engine.dispose()

    result = draft(url)
    system = parse_datamap(yaml.safe_load(to_yaml(result))).sql("userdb")
    assert set(system.tables) == set(metadata.tables)
    assert system.reachable_tables() == set(system.tables)
    users = system.tables["users"]
    assert {i.type.value for i in users.identities} >= {"user_id", "email", "phone"}
    assert not users.deletes_rows(None)
    assert users.restriction_column == "restricted_at"
    logins = system.tables["third_party_logins"]
    assert [(i.type.value, i.column, i.provider_column) for i in logins.identities] == [
        ("third_party", "openid", "provider")]
    # A comment belongs to its author, not to the owner of the upload it is on.
    assert [r.table for r in system.tables["comments"].references] == ["users"]
