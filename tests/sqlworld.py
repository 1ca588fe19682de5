"""A small relational world for connector tests, with an ownership oracle that does not
share code with the connector: every generated row records which users it belongs to.

Shapes it covers: identity columns in two tables, a two-hop chain with a composite key
(posts -> post_tags), a table reachable two ways (follows), a reference cycle
(albums.cover_photo_id <-> photos.album_id), and retained rows (orders).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dsrflow.datamap import DataMap, parse_datamap
from dsrflow.identities import Identity, IdentityType, Subject
from dsrflow.ledger import StepRecord

metadata = sa.MetaData()
users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(320)),
    sa.Column("phone", sa.String(64)),
    sa.Column("birthday", sa.Date),
    sa.Column("nickname", sa.String(64)),
)
devices = sa.Table(
    "devices", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("device_id", sa.String(64)),
)
posts = sa.Table(
    "posts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("body", sa.Text),
)
post_tags = sa.Table(
    "post_tags", metadata,
    sa.Column("post_id", sa.Integer, sa.ForeignKey("posts.id"), primary_key=True),
    sa.Column("tag", sa.String(32), primary_key=True),
)
follows = sa.Table(
    "follows", metadata,
    sa.Column("follower_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("followee_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
)
albums = sa.Table(
    "albums", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("cover_photo_id", sa.Integer,
              sa.ForeignKey("photos.id", use_alter=True, name="fk_album_cover"), nullable=True),
)
photos = sa.Table(
    "photos", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("album_id", sa.Integer, sa.ForeignKey("albums.id"), nullable=False),
    sa.Column("caption", sa.Text),
)
orders = sa.Table(
    "orders", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("amount", sa.Numeric(10, 2)),
    sa.Column("buyer_phone", sa.String(64)),
)

DATAMAP_DOC: dict[str, Any] = {
    "version": "test-1",
    "policy_version": "test",
    "systems": {
        "db": {
            "kind": "sql",
            "url": "sqlite://",
            "tables": {
                "users": {
                    "primary_key": ["id"],
                    "identities": [
                        {"type": "user_id", "column": "id"},
                        {"type": "email", "column": "email"},
                        {"type": "phone", "column": "phone"},
                    ],
                    "birth_date_column": "birthday",
                    "columns": {
                        "id": {"category": "account", "action": "retain",
                               "reason": "referenced by retained orders"},
                        "email": {"category": "contact", "action": "pseudonymize"},
                        "phone": {"category": "contact", "action": "pseudonymize"},
                        "birthday": {"category": "profile", "action": "generalize",
                                     "generalize": "year"},
                        "nickname": {"category": "profile", "action": "null"},
                    },
                },
                "devices": {
                    "primary_key": ["id"],
                    "identities": [{"type": "device_id", "column": "device_id"}],
                    "references": [{"columns": ["user_id"], "table": "users"}],
                    "columns": {
                        "id": {"category": "device", "action": "delete"},
                        "user_id": {"category": "device", "action": "delete"},
                        "device_id": {"category": "device", "action": "delete"},
                    },
                },
                "posts": {
                    "primary_key": ["id"],
                    "references": [{"columns": ["user_id"], "table": "users"}],
                    "columns": {
                        "id": {"category": "content", "action": "delete"},
                        "user_id": {"category": "content", "action": "delete"},
                        "body": {"category": "content", "action": "delete"},
                    },
                },
                "post_tags": {
                    "primary_key": ["post_id", "tag"],
                    "references": [{"columns": ["post_id"], "table": "posts"}],
                    "columns": {
                        "post_id": {"category": "content", "action": "delete"},
                        "tag": {"category": "content", "action": "delete"},
                    },
                },
                "follows": {
                    "primary_key": ["follower_id", "followee_id"],
                    "references": [
                        {"columns": ["follower_id"], "table": "users", "shared": "erase"},
                        {"columns": ["followee_id"], "table": "users", "shared": "erase"},
                    ],
                    "columns": {
                        "follower_id": {"category": "behaviour", "action": "delete"},
                        "followee_id": {"category": "behaviour", "action": "delete"},
                    },
                },
                "albums": {
                    "primary_key": ["id"],
                    "references": [
                        {"columns": ["user_id"], "table": "users"},
                        {"columns": ["cover_photo_id"], "table": "photos"},
                    ],
                    "columns": {
                        "id": {"category": "media", "action": "delete"},
                        "user_id": {"category": "media", "action": "delete"},
                        "cover_photo_id": {"category": "media", "action": "delete"},
                    },
                },
                "photos": {
                    "primary_key": ["id"],
                    "references": [{"columns": ["album_id"], "table": "albums"}],
                    "columns": {
                        "id": {"category": "media", "action": "delete"},
                        "album_id": {"category": "media", "action": "delete"},
                        "caption": {"category": "media", "action": "delete"},
                    },
                },
                "orders": {
                    "primary_key": ["id"],
                    "references": [{"columns": ["user_id"], "table": "users"}],
                    "columns": {
                        "id": {"category": "transaction", "action": "retain",
                               "reason": "tax law: 3 years"},
                        "user_id": {"category": "transaction", "action": "retain",
                                    "reason": "tax law: 3 years"},
                        "amount": {"category": "transaction", "action": "retain",
                                   "reason": "tax law: 3 years"},
                        "buyer_phone": {"category": "contact", "action": "pseudonymize"},
                    },
                },
            },
        }
    },
}


def datamap() -> DataMap:
    return parse_datamap(DATAMAP_DOC, "tests/sqlworld.py")


@dataclass
class World:
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    owners: dict[str, dict[tuple[Any, ...], set[int]]] = field(default_factory=dict)

    def add(self, table: str, row: dict[str, Any], key: tuple[Any, ...], owners: set[int]) -> None:
        self.rows.setdefault(table, []).append(row)
        self.owners.setdefault(table, {})[key] = owners

    def user(self, uid: int) -> dict[str, Any]:
        return next(r for r in self.rows["users"] if r["id"] == uid)

    def subject(self, uid: int, request_id: str, by: IdentityType = IdentityType.EMAIL) -> Subject:
        user = self.user(uid)
        value = {IdentityType.EMAIL: user["email"], IdentityType.PHONE: user["phone"],
                 IdentityType.USER_ID: str(uid)}[by]
        # The world's numbers are written as China writes them.
        return Subject(request_id=request_id, phone_region="CN",
                       identities=(Identity.read(by, value, "CN"),))


def phone_for(uid: int) -> str:
    return f"1380013{uid:04d}"


def generate(rng: random.Random, n_users: int) -> World:
    """Users with a random share of every kind of row. Emails are stored in mixed case and
    phones in several spellings, as real databases hold them."""
    world = World()
    next_id = iter(range(1, 10**6))
    for uid in range(1, n_users + 1):
        email = f"User{uid}@Example.com" if uid % 2 else f"user{uid}@example.com"
        phone = phone_for(uid) if uid % 3 else f"+86{phone_for(uid)}"
        world.add("users", {"id": uid, "email": email, "phone": phone,
                            "birthday": date(1980 + uid % 30, 1 + uid % 12, 1 + uid % 28),
                            "nickname": f"nick{uid}"}, (uid,), {uid})
    for uid in range(1, n_users + 1):
        for _ in range(rng.randint(0, 2)):
            did = next(next_id)
            world.add("devices", {"id": did, "user_id": uid, "device_id": f"dev-{did}"},
                      (did,), {uid})
        for _ in range(rng.randint(0, 3)):
            pid = next(next_id)
            world.add("posts", {"id": pid, "user_id": uid, "body": f"post {pid} by {uid}"},
                      (pid,), {uid})
            for tag in rng.sample(["a", "b", "c"], rng.randint(0, 2)):
                world.add("post_tags", {"post_id": pid, "tag": tag}, (pid, tag), {uid})
        for _ in range(rng.randint(0, 2)):
            aid = next(next_id)
            world.add("albums", {"id": aid, "user_id": uid, "cover_photo_id": None},
                      (aid,), {uid})
            for _ in range(rng.randint(0, 2)):
                ph = next(next_id)
                world.add("photos", {"id": ph, "album_id": aid, "caption": f"photo {ph}"},
                          (ph,), {uid})
        for _ in range(rng.randint(0, 2)):
            oid = next(next_id)
            world.add("orders", {"id": oid, "user_id": uid, "amount": rng.randint(1, 999),
                                 "buyer_phone": phone_for(uid)}, (oid,), {uid})
    pairs = {(a, b) for a in range(1, n_users + 1) for b in range(1, n_users + 1) if a != b}
    for a, b in rng.sample(sorted(pairs), min(len(pairs), n_users * 2)):
        world.add("follows", {"follower_id": a, "followee_id": b}, (a, b), {a, b})
    # Close the cycle: some albums get a cover photo from themselves.
    for album in world.rows.get("albums", []):
        mine = [p["id"] for p in world.rows.get("photos", []) if p["album_id"] == album["id"]]
        if mine and rng.random() < 0.7:
            album["cover_photo_id"] = mine[0]
    return world


def reset(engine: sa.Engine, schema: sa.MetaData = metadata) -> None:
    """An empty schema, whatever the previous example left (the cycle's foreign keys make
    a plain drop_all fail)."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
        else:
            conn.execute(sa.text("PRAGMA foreign_keys=OFF"))
            for table in reversed(schema.sorted_tables):
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table.name}"))
            conn.execute(sa.text("PRAGMA foreign_keys=ON"))


def sqlite_world(folder: Path, seed: int, n_users: int) -> tuple[World, str]:
    """A generated world loaded into `folder/userdb.sqlite`, and its URL."""
    url = f"sqlite:///{folder / 'userdb.sqlite'}"
    return loaded(url, seed, n_users), url


def loaded(url: str, seed: int, n_users: int) -> World:
    """A world generated from `seed` and loaded into the database at `url`."""
    engine = sa.create_engine(url)
    try:
        world = generate(random.Random(seed), n_users)
        load(engine, world)
    finally:
        engine.dispose()
    return world


def datamap_doc(url: str) -> dict[str, Any]:
    """The data map with its one system pointed at `url`: a copy all the way down, so a
    test that breaks its copy on purpose (test_wheel) breaks no later test's."""
    doc: dict[str, Any] = copy.deepcopy(DATAMAP_DOC)
    doc["systems"] = {"db": {**doc["systems"]["db"], "url": url}}
    return doc


def datamap_with_partner(
    url: str, endpoint: str, domain: str, *, category: str = "behaviour",
    email_format: str | None = None,
) -> dict[str, Any]:
    """`datamap_doc` with an OpenDSR partner `adnet` beside `db` (the reference partner at
    `endpoint`, calling back from `domain`; its certificate in `partner.pem` beside the
    config), holding data of `category`, sent the subject's email (as `email_format`
    says, if given)."""
    doc = datamap_doc(url)
    email: dict[str, str] = {"type": "email"}
    if email_format is not None:
        email["format"] = email_format
    doc["systems"]["adnet"] = {
        "kind": "partner", "protocol": "opendsr", "categories": [category],
        "endpoint": endpoint, "identities": [email],
        "callback_domains": [domain], "certificate": "partner.pem",
    }
    return doc


def load(engine: sa.Engine, world: World) -> None:
    reset(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        for name in ("users", "devices", "posts", "post_tags", "follows", "orders"):
            if world.rows.get(name):
                conn.execute(metadata.tables[name].insert(), world.rows[name])
        # Insert albums without covers first, then photos, then set the covers: the
        # foreign keys point both ways.
        if world.rows.get("albums"):
            conn.execute(albums.insert(), [{**a, "cover_photo_id": None}
                                           for a in world.rows["albums"]])
        if world.rows.get("photos"):
            conn.execute(photos.insert(), world.rows["photos"])
        for album in world.rows.get("albums", []):
            if album["cover_photo_id"] is not None:
                conn.execute(albums.update().where(albums.c.id == album["id"])
                             .values(cover_photo_id=album["cover_photo_id"]))


def snapshot(
    engine: sa.Engine, schema: sa.MetaData = metadata
) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """Every row of every table, by primary key."""
    out: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    with engine.connect() as conn:
        for table in schema.sorted_tables:
            pk = [c.name for c in table.primary_key.columns]
            out[table.name] = {
                tuple(row._mapping[c] for c in pk): dict(row._mapping)
                for row in conn.execute(sa.select(table))
            }
    return out


def total_rows(url: str) -> int:
    """Every row of every table: what left the database is the difference of two counts."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        total = sum(int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                    for t in metadata.tables.values())
    engine.dispose()
    return total


def deleted_as_recorded(steps: list[StepRecord], system: str = "db") -> tuple[int, int]:
    """What the ledger's erase steps and the signed certificates say was deleted in
    `system`, summed over the requests."""
    return changed_as_recorded(steps, system, "deleted")


def changed_as_recorded(steps: list[StepRecord], system: str, count: str) -> tuple[int, int]:
    """What the ledger's erase steps and the signed certificates say of `count` (deleted,
    anonymized) in `system`, summed over the requests."""
    import json
    from pathlib import Path

    ledger = sum(getattr(s, count) or 0 for s in steps
                 if (s.system, s.action) == (system, "erase"))
    certified = 0
    for step in steps:
        if step.action == "certify":
            document = json.loads(Path(step.details["path"]).read_text())
            [entry] = [s for s in document["certificate"]["systems"] if s["system"] == system]
            certified += int(entry["erase"][count])
    return ledger, certified


def unfollow_among(url: str, uids: list[int]) -> None:
    """Delete the follows between these users: one such row has two owners, and a test
    that sums what each request deleted would count it twice."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.delete(follows).where(follows.c.follower_id.in_(uids),
                                              follows.c.followee_id.in_(uids)))
    engine.dispose()
