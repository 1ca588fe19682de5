"""Leaf tables under a composite key: a table whose rows point at their parent by a
two-column primary key is deleted by its parent rows without being read first
(`Locator.unread`, `DELETE … RETURNING`), and leaves exactly what reading it first leaves,
with the same counts, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from connectors.sql import SqlConnector
from dsrflow.crypto import Pseudonymizer, new_key
from dsrflow.datamap import parse_datamap
from dsrflow.identities import Identity, IdentityType, Subject
from tests.test_sql_connector import make_engine

metadata = sa.MetaData()
sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(320)),
)
sa.Table(
    "carts", metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("cart_no", sa.Integer, primary_key=True, autoincrement=False),
)
sa.Table(
    "cart_items", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("cart_user", sa.Integer, nullable=False),
    sa.Column("cart_no", sa.Integer, nullable=False),
    sa.Column("sku", sa.String(32)),
    sa.ForeignKeyConstraint(["cart_user", "cart_no"], ["carts.user_id", "carts.cart_no"]),
)


def _datamap() -> Any:
    delete = {"category": "transaction", "action": "delete"}
    return parse_datamap({
        "version": "leaf-1", "policy_version": "test",
        "systems": {"db": {"kind": "sql", "url": "sqlite://", "tables": {
            "users": {
                "primary_key": ["id"],
                "identities": [{"type": "user_id", "column": "id"},
                               {"type": "email", "column": "email"}],
                "columns": {"id": {"category": "account", "action": "delete"},
                            "email": {"category": "contact", "action": "delete"}},
            },
            "carts": {
                "primary_key": ["user_id", "cart_no"],
                "references": [{"columns": ["user_id"], "table": "users"}],
                "columns": {"user_id": delete, "cart_no": delete},
            },
            "cart_items": {
                "primary_key": ["id"],
                "references": [{"columns": ["cart_user", "cart_no"], "table": "carts"}],
                "columns": {"id": delete, "cart_user": delete, "cart_no": delete,
                            "sku": delete},
            },
        }}},
    })


def _load(url: str) -> SqlConnector:
    engine = make_engine(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(metadata.tables["users"].insert(),
                     [{"id": uid, "email": f"user{uid}@example.com"} for uid in (1, 2, 3)])
        # Cart numbers repeat across users: only the pair names a cart, so a delete by
        # the cart number alone would take other people's items.
        conn.execute(metadata.tables["carts"].insert(),
                     [{"user_id": uid, "cart_no": no} for uid in (1, 2, 3) for no in (1, 2)])
        conn.execute(metadata.tables["cart_items"].insert(), [
            {"id": 100 * uid + 10 * no + i, "cart_user": uid, "cart_no": no,
             "sku": f"sku-{uid}-{no}-{i}"}
            for uid in (1, 2, 3) for no in (1, 2) for i in range(uid + no)])
    return SqlConnector("db", _datamap().sql("db"), engine)


def _snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {name: sorted(tuple(r) for r in conn.execute(sa.select(table)))
                for name, table in metadata.tables.items()}


def test_a_leaf_under_a_composite_key_is_deleted_unread_exactly_as_read_first(
    db_url: str,
) -> None:
    subjects = [Subject(request_id=f"r{uid}", identities=(
        Identity.read(IdentityType.EMAIL, f"user{uid}@example.com"),)) for uid in (1, 3)]
    keys = {s.request_id: Pseudonymizer(new_key()) for s in subjects}
    results = []
    for returning in (False, True):
        connector = _load(db_url)
        try:
            assert connector.locator.unread == {"cart_items"}
            connector.delete_returning = returning
            outcomes = connector.erase(subjects, None, keys)
            left = _snapshot(connector.engine)
            remaining = {rid: o.total("remaining")
                         for rid, o in connector.verify(subjects, None).items()}
        finally:
            connector.dispose()
        counts = {rid: {t: (p.found, p.deleted, p.retained) for t, p in o.parts.items()}
                  for rid, o in outcomes.items()}
        results.append((left, counts))
        # Only user 2's rows are left, whole; each subject's items counted as theirs.
        assert left["cart_items"] == sorted(
            (100 * 2 + 10 * no + i, 2, no, f"sku-2-{no}-{i}")
            for no in (1, 2) for i in range(2 + no))
        assert left["users"] == [(2, "user2@example.com")]
        assert counts["r1"]["cart_items"] == (5, 5, 0)  # carts 1 and 2: 2 and 3 items
        assert counts["r3"]["cart_items"] == (9, 9, 0)  # 4 and 5
        assert remaining == {"r1": 0, "r3": 0}
    assert results[1] == results[0]
