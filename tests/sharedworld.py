"""A relational world where rows belong to more than one person, for the SQL connector's
precision tests. Every row records whose it is (`homes`), decided by the generator from
what the row means — the buyer and the addressee of an order, the members of a household
card, the owners of both ends of an album's cover — not from the connector's rules.

Shapes: orders that ship to another customer's address and to an orphan pickup address,
household cards with members, an album whose cover is someone else's photo (a reference
cycle across owners), a self-reference (referrals, `shared: erase`), follow edges (both
ends, `shared: erase`), devices and sessions that share a device id or an office IP, and
look-alike identifiers (user 1 and 11, `203.0.113.1` and `203.0.113.11`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from dsrflow.datamap import DataMap, parse_datamap
from dsrflow.identities import Identity, IdentityType, Subject
from tests import sqlworld

Key = tuple[Any, ...]
OFFICE_IP = "198.51.100.7"  # one office, many users behind it
TAX = "tax law: 3 years"

metadata = sa.MetaData()
users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(320)),
    sa.Column("phone", sa.String(64)),
    sa.Column("last_ip", sa.String(64)),
    sa.Column("referrer_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
    sa.Column("nickname", sa.String(64)),
)
addresses = sa.Table(
    "addresses", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
    sa.Column("street", sa.String(128)),
)
orders = sa.Table(
    "orders", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("address_id", sa.Integer, sa.ForeignKey("addresses.id"), nullable=True),
    sa.Column("amount", sa.Integer),
    sa.Column("note", sa.String(128)),
)
cards = sa.Table(
    "cards", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("last4", sa.String(4)),
)
card_members = sa.Table(
    "card_members", metadata,
    sa.Column("card_id", sa.Integer, sa.ForeignKey("cards.id"), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
)
devices = sa.Table(
    "devices", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("device_id", sa.String(64)),
)
sessions = sa.Table(
    "sessions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("ip", sa.String(64)),
)
albums = sa.Table(
    "albums", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("cover_photo_id", sa.Integer,
              sa.ForeignKey("photos.id", use_alter=True, name="fk_shared_cover"), nullable=True),
)
photos = sa.Table(
    "photos", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("album_id", sa.Integer, sa.ForeignKey("albums.id"), nullable=False),
    sa.Column("caption", sa.String(128)),
)
follows = sa.Table(
    "follows", metadata,
    sa.Column("follower_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("followee_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
)
# Leaves: one reference each, to a primary key, and nothing points at them (erasure
# deletes their rows without reading them first: `Locator.unread`). A like is its photo's
# and goes or stays with it; a note is its account's.
likes = sa.Table(
    "likes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("photo_id", sa.Integer, sa.ForeignKey("photos.id"), nullable=False),
)
notes = sa.Table(
    "notes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("body", sa.String(128)),
)

# Insert order: parents first (the album covers are set afterwards).
LOAD_ORDER = ["users", "addresses", "orders", "cards", "card_members", "devices", "sessions",
              "albums", "photos", "follows", "likes", "notes"]


def _delete_all(category: str, *columns: str) -> dict[str, Any]:
    return {c: {"category": category, "action": "delete"} for c in columns}


def _ref(column: str, table: str, shared: str = "keep") -> dict[str, Any]:
    return {"columns": [column], "table": table, "shared": shared}


DATAMAP_DOC: dict[str, Any] = {
    "version": "shared-1",
    "policy_version": "test",
    "systems": {"db": {"kind": "sql", "url": "sqlite://", "tables": {
        "users": {
            "primary_key": ["id"],
            "identities": [
                {"type": "user_id", "column": "id"},
                {"type": "email", "column": "email"},
                {"type": "phone", "column": "phone"},
                {"type": "ip", "column": "last_ip"},
            ],
            # Who referred whom is no reason to keep either account.
            "references": [_ref("referrer_id", "users", "erase")],
            "columns": {
                "id": {"category": "account", "action": "retain", "reason": "account tombstone"},
                "email": {"category": "contact", "action": "pseudonymize"},
                "phone": {"category": "contact", "action": "pseudonymize"},
                "last_ip": {"category": "device", "action": "null"},
                "referrer_id": {"category": "account", "action": "null"},
                "nickname": {"category": "profile", "action": "null"},
            },
        },
        "addresses": {
            "primary_key": ["id"],
            "references": [_ref("user_id", "users")],
            "columns": _delete_all("contact", "id", "user_id", "street"),
        },
        "orders": {
            "primary_key": ["id"],
            "references": [_ref("user_id", "users"), _ref("address_id", "addresses")],
            "columns": {
                "id": {"category": "transaction", "action": "retain", "reason": TAX},
                "user_id": {"category": "transaction", "action": "retain", "reason": TAX},
                "amount": {"category": "transaction", "action": "retain", "reason": TAX},
                "address_id": {"category": "contact", "action": "null"},
                "note": {"category": "contact", "action": "null"},
            },
        },
        "cards": {
            "primary_key": ["id"],
            "references": [_ref("user_id", "users")],
            "columns": _delete_all("transaction", "id", "user_id", "last4"),
        },
        "card_members": {
            "primary_key": ["card_id", "user_id"],
            "references": [_ref("card_id", "cards"), _ref("user_id", "users")],
            "columns": _delete_all("transaction", "card_id", "user_id"),
        },
        "devices": {
            "primary_key": ["id"],
            "identities": [{"type": "device_id", "column": "device_id"}],
            "references": [_ref("user_id", "users")],
            "columns": _delete_all("device", "id", "user_id", "device_id"),
        },
        "sessions": {
            "primary_key": ["id"],
            "identities": [{"type": "ip", "column": "ip"}],
            "references": [_ref("user_id", "users")],
            "columns": _delete_all("security", "id", "user_id", "ip"),
        },
        "albums": {
            "primary_key": ["id"],
            "references": [_ref("user_id", "users"), _ref("cover_photo_id", "photos")],
            "columns": _delete_all("media", "id", "user_id", "cover_photo_id"),
        },
        "photos": {
            "primary_key": ["id"],
            "references": [_ref("album_id", "albums")],
            "columns": _delete_all("media", "id", "album_id", "caption"),
        },
        "follows": {
            "primary_key": ["follower_id", "followee_id"],
            "references": [_ref("follower_id", "users", "erase"),
                           _ref("followee_id", "users", "erase")],
            "columns": _delete_all("behaviour", "follower_id", "followee_id"),
        },
        "likes": {
            "primary_key": ["id"],
            "references": [_ref("photo_id", "photos")],
            "columns": _delete_all("media", "id", "photo_id"),
        },
        "notes": {
            "primary_key": ["id"],
            "references": [_ref("user_id", "users")],
            "columns": _delete_all("profile", "id", "user_id", "body"),
        },
    }}},
}
# Tables whose rows go with any one of their people (`shared: erase` on every reference).
EITHER_END = frozenset({"follows"})


def datamap(url: str = "sqlite://") -> DataMap:
    doc: dict[str, Any] = {**DATAMAP_DOC}
    doc["systems"] = {"db": {**DATAMAP_DOC["systems"]["db"], "url": url}}
    return parse_datamap(doc, "tests/sharedworld.py")


@dataclass
class World:
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    homes: dict[str, dict[Key, set[int]]] = field(default_factory=dict)

    def add(self, table: str, row: dict[str, Any], homes: set[int]) -> dict[str, Any]:
        self.rows.setdefault(table, []).append(row)
        self.homes.setdefault(table, {})[self.key(table, row)] = set(homes)
        return row

    @staticmethod
    def key(table: str, row: dict[str, Any]) -> Key:
        pk = DATAMAP_DOC["systems"]["db"]["tables"][table]["primary_key"]
        return tuple(row[c] for c in pk)

    def home_add(self, table: str, row: dict[str, Any], *people: int) -> None:
        self.homes[table][self.key(table, row)].update(people)

    def user(self, uid: int) -> dict[str, Any]:
        return next(r for r in self.rows["users"] if r["id"] == uid)

    def subject(self, uid: int, request_id: str, by: IdentityType = IdentityType.EMAIL) -> Subject:
        user = self.user(uid)
        value = {IdentityType.EMAIL: user["email"], IdentityType.PHONE: user["phone"],
                 IdentityType.USER_ID: str(uid), IdentityType.IP: user["last_ip"]}[by]
        return Subject(request_id=request_id, phone_region="CN",
                       identities=(Identity.read(by, value, "CN"),))


def generate(rng: random.Random, n_users: int) -> World:
    world = World()
    ids = iter(range(1, 10**6))
    for uid in range(1, n_users + 1):
        digits = f"1380013{uid:04d}"
        phone = [digits, f"+86{digits}", f"0086{digits}"][uid % 3]  # spellings SQL looks for
        referrer = rng.choice([None, *range(1, uid)]) if uid > 1 else None
        world.add("users", {
            "id": uid, "email": f"User{uid}@Example.com" if uid % 2 else f"user{uid}@example.com",
            "phone": phone,
            "last_ip": OFFICE_IP if rng.random() < 0.25 else f"203.0.113.{uid}",
            "referrer_id": referrer, "nickname": f"nick{uid}",
        }, {uid})
    people = range(1, n_users + 1)
    owned_addresses: list[dict[str, Any]] = []
    for uid in people:
        for _ in range(rng.randint(0, 2)):
            owned_addresses.append(world.add(
                "addresses", {"id": next(ids), "user_id": uid, "street": f"{uid} Home St"}, {uid}))
    orphans: list[dict[str, Any]] = [
        world.add("addresses", {"id": next(ids), "user_id": None, "street": "Pickup point"},
                  set())
        for _ in range(rng.randint(0, 2))
    ]
    for uid in people:
        for _ in range(rng.randint(0, 3)):
            roll = rng.random()
            mine = [a for a in owned_addresses if a["user_id"] == uid]
            theirs = [a for a in owned_addresses if a["user_id"] != uid]
            if roll < 0.5 and mine:
                address = rng.choice(mine)
            elif roll < 0.75 and theirs:
                address = rng.choice(theirs)  # a gift to someone else's home
            elif roll < 0.9 and orphans:
                address = rng.choice(orphans)
            else:
                address = None
            homes = {uid} | ({address["user_id"]} if address and address["user_id"] else set())
            world.add("orders", {"id": next(ids), "user_id": uid,
                                 "address_id": address["id"] if address else None,
                                 "amount": rng.randint(1, 999), "note": f"note of {uid}"}, homes)
            if address is not None:
                world.home_add("addresses", address, uid)
    for uid in people:
        if rng.random() < 0.6:
            card = world.add("cards", {"id": next(ids), "user_id": uid, "last4": f"{uid:04d}"},
                             {uid})
            others = [p for p in people if p != uid]
            for member in rng.sample(others, min(len(others), rng.randint(0, 2))):
                world.add("card_members", {"card_id": card["id"], "user_id": member},
                          {uid, member})
                world.home_add("cards", card, member)
    tablets = [f"tablet-{k}" for k in range(max(1, n_users // 3))]
    for uid in people:
        for _ in range(rng.randint(0, 2)):
            did = next(ids)
            device = rng.choice(tablets) if rng.random() < 0.3 else f"dev-{did}"
            world.add("devices", {"id": did, "user_id": uid, "device_id": device}, {uid})
        for _ in range(rng.randint(0, 2)):
            ip = OFFICE_IP if rng.random() < 0.3 else world.user(uid)["last_ip"]
            world.add("sessions", {"id": next(ids), "user_id": uid, "ip": ip}, {uid})
    photo_album: dict[int, dict[str, Any]] = {}
    for uid in people:
        for _ in range(rng.randint(0, 2)):
            album = world.add("albums", {"id": next(ids), "user_id": uid,
                                         "cover_photo_id": None}, {uid})
            for _ in range(rng.randint(0, 3)):
                photo = world.add("photos", {"id": next(ids), "album_id": album["id"],
                                             "caption": f"by {uid}"}, {uid})
                photo_album[photo["id"]] = album
    all_photos = list(photo_album)
    for album in world.rows.get("albums", []):
        inside = [p for p, a in photo_album.items() if a is album]
        roll = rng.random()
        if roll < 0.5 and inside:
            album["cover_photo_id"] = rng.choice(inside)
        elif roll < 0.7 and all_photos:
            cover = rng.choice(all_photos)
            album["cover_photo_id"] = cover
            their_album = photo_album[cover]
            if their_album is not album:
                # The cover is theirs: the album is both people's, and so is the photo (and
                # the album it lives in, which the photo cannot leave).
                world.home_add("albums", album, their_album["user_id"])
                world.home_add("photos", {"id": cover}, album["user_id"])
                world.home_add("albums", their_album, album["user_id"])
    pairs = sorted({(a, b) for a in people for b in people if a != b})
    for a, b in rng.sample(pairs, min(len(pairs), n_users)):
        world.add("follows", {"follower_id": a, "followee_id": b}, {a, b})
    # Drawn last, so that the rest of a seed's world stays as it was.
    for photo_id, its_album in photo_album.items():
        for _ in range(rng.randint(0, 2)):
            world.add("likes", {"id": next(ids), "photo_id": photo_id}, {its_album["user_id"]})
    for uid in people:
        for _ in range(rng.randint(0, 2)):
            world.add("notes", {"id": next(ids), "user_id": uid, "body": f"by {uid}"}, {uid})
    return world


def load(engine: sa.Engine, world: World) -> None:
    sqlworld.reset(engine, metadata)
    metadata.create_all(engine)
    with engine.begin() as conn:
        for name in LOAD_ORDER:
            rows = world.rows.get(name)
            if not rows:
                continue
            if name == "users":
                # Referrers point at earlier users: insert in id order.
                rows = sorted(rows, key=lambda r: r["id"])
            if name == "albums":
                rows = [{**r, "cover_photo_id": None} for r in rows]
            conn.execute(metadata.tables[name].insert(), rows)
        for album in world.rows.get("albums", []):
            if album["cover_photo_id"] is not None:
                conn.execute(albums.update().where(albums.c.id == album["id"])
                             .values(cover_photo_id=album["cover_photo_id"]))


def snapshot(engine: sa.Engine) -> dict[str, dict[Key, dict[str, Any]]]:
    return sqlworld.snapshot(engine, metadata)
