"""Build the Wishe demo world: the schema plus a deterministic population of users.

The named demo subjects (`subjects.SUBJECTS`) come first with their fixed ids, then random
users. Everyone gets rows in every table, and the world is deliberately tangled the way a
real one is, so that erasure precision means something: demo subjects follow and are
followed by others, comment on other people's uploads, appear in other people's address
books, and receive gifts ordered by other people.

Everything derives from `seed` (one `random.Random` and one seeded Faker, consumed in a
fixed order) and from a fixed clock, never from the wall clock: the same seed gives the
same rows, byte for byte.

    python -m examples.wishe.generate sqlite:///wishe.db --users 200
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from faker import Faker
from sqlalchemy import create_engine

from examples.wishe import schema
from examples.wishe.subjects import SUBJECTS, DemoSubject

# The world's "now": data is dated before it, tickets in tickets/ after it.
EPOCH = datetime(2026, 11, 1, tzinfo=UTC)
FIRST_SIGNUP = datetime(2020, 6, 1, tzinfo=UTC)

CITIES: dict[str, tuple[float, float]] = {
    "北京": (39.9042, 116.4074),
    "上海": (31.2304, 121.4737),
    "广州": (23.1291, 113.2644),
    "深圳": (22.5431, 114.0579),
    "杭州": (30.2741, 120.1551),
    "成都": (30.5728, 104.0668),
    "武汉": (30.5928, 114.3055),
    "西安": (34.3416, 108.9398),
    "南京": (32.0603, 118.7969),
    "重庆": (29.5630, 106.5516),
}
PROVIDERS = ("wechat", "qq", "weibo", "apple")
IOS_DEVICES = ("iPhone 15", "iPhone 14 Pro", "iPhone 13", "iPad Air")
ANDROID_DEVICES = (
    "HUAWEI Mate 60 Pro", "HUAWEI P60", "Xiaomi 14", "Redmi K70", "OPPO Find X7",
    "vivo X100", "Honor Magic6", "OnePlus 12",
)
MEDIA_TYPES = (("image/jpeg", "jpg", 6), ("image/heic", "heic", 3), ("video/mp4", "mp4", 1))
CANNED_COMMENTS = (
    "好看！", "太美了", "在哪里拍的？", "求链接", "哈哈哈哈哈", "赞👍", "羡慕了",
    "下次一起去", "这个颜色绝了", "收藏了", "同款！", "氛围感拉满", "好可爱", "学到了",
)
BROWSE_PATHS = ("item", "topic", "user", "live", "collection")
IP_PREFIXES = (36, 58, 101, 111, 113, 116, 120, 183, 223)


@dataclass
class World:
    """What was built: enough for a demo or a test to find its way around."""

    url: str = field(repr=False)  # may hold a password
    users: int
    seed: int
    subjects: tuple[DemoSubject, ...]
    counts: dict[str, int] = field(default_factory=dict)


def build_world(url: str, users: int = 200, seed: int = 7) -> World:
    """(Re)create the schema at `url` and fill it. Existing Wishe tables are dropped: the
    world is rebuilt, never appended to."""
    if users < len(SUBJECTS):
        raise ValueError(f"users must be at least {len(SUBJECTS)} (the demo subjects)")
    rows = _Population(users, seed).build()
    engine = create_engine(url)
    try:
        schema.metadata.drop_all(engine)
        schema.metadata.create_all(engine)
        with engine.begin() as conn:
            for table in schema.metadata.sorted_tables:
                if rows[table.name]:
                    # One executemany per table: the cost is per table, not per row.
                    conn.execute(table.insert(), rows[table.name])
    finally:
        engine.dispose()
    return World(
        url=url,
        users=users,
        seed=seed,
        subjects=SUBJECTS,
        counts={name: len(table_rows) for name, table_rows in rows.items()},
    )


@dataclass
class _Person:
    """In-memory facts about a user that several tables repeat (orders carry the name,
    device names the owner's name, ...); not all of them are columns of `users`."""

    user_id: int
    name: str
    phone: str  # national digits
    gender: str | None
    city: str
    created_at: datetime


class _Population:
    def __init__(self, users: int, seed: int) -> None:
        self.count = users
        self.rng = random.Random(seed)
        self.fake = Faker("zh_CN")
        self.fake.seed_instance(seed)
        self.rows: dict[str, list[dict[str, Any]]] = {t: [] for t in schema.metadata.tables}
        self.people: list[_Person] = []
        self.ids: dict[str, int] = {}
        # Fixed identities are reserved up front so no random user can collide with (and
        # so be erased along with) a demo subject.
        self.emails = {s.email_normalized for s in SUBJECTS}
        self.phones = {s.phone_e164[3:] for s in SUBJECTS}
        self.openids = {(login.provider, login.openid) for s in SUBJECTS for login in s.logins}
        self.devices = {d for s in SUBJECTS for d in s.device_ids}

    def build(self) -> dict[str, list[dict[str, Any]]]:
        for subject in SUBJECTS:
            self._demo_user(subject)
        for user_id in range(len(SUBJECTS) + 1, self.count + 1):
            self._random_user(user_id)
        for person in self.people:
            self._personal_rows(person, demo=person.user_id <= len(SUBJECTS))
        self._cross_links()
        # The last user cancelled their account six weeks before the world's "now": past
        # the 30 days after which the retention sweep files the account's erasure (6.5).
        # Set without the generator, so every other row stays what it was.
        self.rows["users"][-1]["cancelled_at"] = EPOCH - timedelta(days=42)
        return self.rows

    # -- users --------------------------------------------------------------------------
    def _demo_user(self, s: DemoSubject) -> None:
        created = self._between(FIRST_SIGNUP, EPOCH - timedelta(days=200))
        self._add("users", {
            "id": s.user_id, "phone": s.phone, "email": s.email,
            "password_hash": self._password_hash(), "birthday": s.birthday,
            "gender": s.gender, "unit_name": s.unit_name, "created_at": created,
            "cancelled_at": None, "restricted_at": None,
        })
        person = _Person(s.user_id, s.name, s.phone_e164[3:], s.gender, s.city, created)
        self.people.append(person)
        for login in s.logins:
            self._third_party_login(person, login.provider, login.openid, s.email)
        for device_id in s.device_ids:
            self._device(s.user_id, s.name, device_id, created)

    def _random_user(self, user_id: int) -> None:
        rng, fake = self.rng, self.fake
        name = fake.name()
        national = self._unique_phone()
        created = self._between(FIRST_SIGNUP, EPOCH - timedelta(days=3))
        email = self._unique_email() if rng.random() < 0.7 else None
        gender = rng.choice(("male", "female", None))
        self._add("users", {
            "id": user_id,
            # The spellings the app accumulated over its client versions.
            "phone": rng.choice((national, national, "+86" + national, "86" + national)),
            "email": email.title() if email and rng.random() < 0.2 else email,
            "password_hash": self._password_hash() if rng.random() < 0.8 else None,
            "birthday": self._birthday() if rng.random() < 0.6 else None,
            "gender": gender,
            "unit_name": fake.company() if rng.random() < 0.3 else None,
            "created_at": created, "cancelled_at": None, "restricted_at": None,
        })
        person = _Person(user_id, name, national, gender, rng.choice(list(CITIES)), created)
        self.people.append(person)
        for provider in rng.sample(PROVIDERS, rng.choices((0, 1, 2), (35, 50, 15))[0]):
            self._third_party_login(person, provider, self._openid(provider), email)
        for _ in range(rng.choices((1, 2, 3), (60, 30, 10))[0]):
            self._device(user_id, name, self._device_id(), created)

    # -- per-user tables ----------------------------------------------------------------
    def _personal_rows(self, p: _Person, demo: bool) -> None:
        """Location, address book, face, uploads, browsing and orders. Demo subjects get at
        least one row everywhere so every request type has something to find."""
        rng, fake = self.rng, self.fake
        lat0, lon0 = CITIES[p.city]
        n = rng.randint(3, 30) if demo or rng.random() < 0.7 else 0  # location off: none
        for _ in range(n):
            self._add("location_history", {
                "user_id": p.user_id,
                "latitude": round(lat0 + rng.uniform(-0.08, 0.08), 6),
                "longitude": round(lon0 + rng.uniform(-0.08, 0.08), 6),
                "recorded_at": self._between(p.created_at, EPOCH),
            })
        n = rng.randint(3, 25) if demo or rng.random() < 0.6 else 0  # address book not shared
        for _ in range(n):
            self._add("contacts", {
                "user_id": p.user_id, "contact_name": fake.name(),
                "contact_phone": self._spelled(fake.phone_number()),
            })
        if demo or rng.random() < 0.25:
            template_id = uuid.UUID(bytes=rng.randbytes(16), version=4)
            self._add("face_templates", {
                "user_id": p.user_id, "template": rng.randbytes(512),
                "object_key": f"faces/{p.user_id}/{template_id}.jpg",
                "created_at": self._between(p.created_at, EPOCH),
            })
        for _ in range(rng.randint(1, 8) if demo else rng.randint(0, 10)):
            created = self._between(p.created_at, EPOCH)
            media_type, ext = self._media_type()
            self._add("uploads", {
                "user_id": p.user_id, "media_type": media_type, "created_at": created,
                "s3_key": f"uploads/{p.user_id}/{created:%Y/%m}/{rng.randbytes(8).hex()}.{ext}",
            })
        for _ in range(rng.randint(5, 40)):
            self._add("browsing_history", {
                "user_id": p.user_id, "url": self._browse_url(),
                "viewed_at": self._between(p.created_at, EPOCH), "ip_address": self._ip(),
            })
        for _ in range(rng.randint(1, 4) if demo else rng.choice((0, 0, 1, 2, 3, 5))):
            self._order(p.user_id, p.name, p.phone, p.created_at)

    def _cross_links(self) -> None:
        """Rows that tie people together: follows, comments, address books, gifts."""
        rng = self.rng
        ids = [p.user_id for p in self.people]
        demo_ids = [s.user_id for s in SUBJECTS]
        by_id = {p.user_id: p for p in self.people}
        pairs: dict[tuple[int, int], None] = {}  # insertion-ordered set
        for follower in ids:
            for followee in rng.sample(ids, min(len(ids), rng.randint(0, 12))):
                if followee != follower:
                    pairs[(follower, followee)] = None
        for demo_id in demo_ids:
            for other in rng.sample(ids, min(len(ids), 4)):
                if other != demo_id:
                    pairs[(demo_id, other)] = None
                    pairs[(other, demo_id)] = None
        for follower, followee in pairs:
            since = max(by_id[follower].created_at, by_id[followee].created_at)
            self._add("follows", {
                "follower_id": follower, "followee_id": followee,
                "created_at": self._between(since, EPOCH),
            }, keyed=False)

        uploads = self.rows["uploads"]
        for person in self.people:
            demo = person.user_id in demo_ids
            for _ in range(rng.randint(1, 6) if demo else rng.randint(0, 12)):
                roll = rng.random()
                upload = rng.choice(uploads) if uploads and roll < 0.9 else None
                since = person.created_at
                if upload is not None:
                    since = max(since, upload["created_at"])
                self._add("comments", {
                    "user_id": person.user_id,
                    "upload_id": upload["id"] if upload is not None else None,
                    "body": self._comment(), "created_at": self._between(since, EPOCH),
                })

        # Demo subjects know each other: each is in the next one's address book (under a
        # spelling of their number a naive match would miss), and each comments on the
        # next one's upload.
        for mine, theirs in zip(SUBJECTS, SUBJECTS[1:] + SUBJECTS[:1], strict=True):
            national = mine.phone_e164[3:]
            self._add("contacts", {
                "user_id": theirs.user_id, "contact_name": mine.name,
                "contact_phone": f"{national[:3]} {national[3:7]} {national[7:]}",
            })
            target = next(u for u in uploads if u["user_id"] == theirs.user_id)
            self._add("comments", {
                "user_id": mine.user_id, "upload_id": target["id"], "body": "好久不见！",
                "created_at": self._between(max(target["created_at"], FIRST_SIGNUP), EPOCH),
            })
        # Random users appear in demo subjects' lives too: a few random users keep a demo
        # subject in their address book, and one sends each demo subject a gift.
        randoms = self.people[len(SUBJECTS):]
        for subject in SUBJECTS:
            for person in rng.sample(randoms, min(len(randoms), 2)):
                self._add("contacts", {
                    "user_id": person.user_id, "contact_name": subject.name,
                    "contact_phone": subject.phone_e164,
                })
            if randoms:
                giver = rng.choice(randoms)
                self._order(
                    giver.user_id, subject.name, subject.phone_e164[3:], giver.created_at,
                    gift=False,  # addressed to the subject by name and number, on purpose
                )

    # -- rows ---------------------------------------------------------------------------
    def _add(self, table: str, row: dict[str, Any], keyed: bool = True) -> None:
        if keyed and "id" not in row:
            self.ids[table] = self.ids.get(table, 0) + 1
            row = {"id": self.ids[table], **row}
        self.rows[table].append(row)

    def _third_party_login(
        self, p: _Person, provider: str, openid: str, email: str | None
    ) -> None:
        """What the provider shared at sign-in (policy 2.4.1.6). Apple shares neither
        region nor gender, and hides the address behind a relay."""
        rng, apple = self.rng, provider == "apple"
        if apple:
            shared_email: str | None = f"{rng.randbytes(5).hex()}@privaterelay.example.com"
        else:
            shared_email = email if email and rng.random() < 0.3 else None
        self._add("third_party_logins", {
            "user_id": p.user_id, "provider": provider, "openid": openid,
            "nickname": rng.choice((p.name, self.fake.user_name(), p.name[-1] * 2)),
            "avatar_url": f"https://avatar.example.com/{provider}/{rng.randbytes(12).hex()}/132",
            "region": None if apple or rng.random() < 0.2 else f"中国 {p.city}",
            "gender": None if apple else p.gender,
            "email": shared_email,
        })

    def _device(self, user_id: int, name: str, device_id: str, since: datetime) -> None:
        ios = "-" in device_id  # identifierForVendor is a UUID; ANDROID_ID is 16 hex
        model = self.rng.choice(IOS_DEVICES if ios else ANDROID_DEVICES)
        self._add("trusted_devices", {
            "user_id": user_id, "device_id": device_id,
            "name": f"{name}的{model}" if self.rng.random() < 0.5 else model,
            "type": "tablet" if "iPad" in model else "phone",
            "last_used_at": self._between(since, EPOCH),
        })

    def _order(
        self, user_id: int, buyer: str, national: str, since: datetime,
        gift: bool | None = None,
    ) -> None:
        """An order shipped to `buyer` at `national`, or, if `gift` (default: sometimes),
        to somebody made up."""
        if gift is None:
            gift = self.rng.random() < 0.15
        self._add("orders", {
            "user_id": user_id,
            "amount": Decimal(self.rng.randint(990, 259900)) / 100,
            "buyer_name": self.fake.name() if gift else buyer,
            "buyer_phone": self._spelled(self.fake.phone_number() if gift else national),
            "shipping_address": self.fake.address().replace("\n", " "),
            "created_at": self._between(since, EPOCH),
        })

    # -- values -------------------------------------------------------------------------
    def _between(self, start: datetime, end: datetime) -> datetime:
        span = max(int((end - start).total_seconds()), 1)
        return start + timedelta(seconds=self.rng.randrange(span))

    def _birthday(self) -> date:
        return date(1960, 1, 1) + timedelta(days=self.rng.randrange(48 * 365))  # adults

    def _password_hash(self) -> str:
        salt = base64.b64encode(self.rng.randbytes(16)).decode().rstrip("=")
        digest = base64.b64encode(self.rng.randbytes(32)).decode().rstrip("=")
        return f"$argon2id$v=19$m=65536,t=3,p=4${salt}${digest}"

    def _unique_phone(self) -> str:
        while True:
            national = self.fake.phone_number()
            if national not in self.phones:
                self.phones.add(national)
                return national

    def _unique_email(self) -> str:
        while True:
            local = f"{self.fake.user_name()}{self.rng.randrange(100)}"
            email = f"{local}@{self.rng.choice(('example.com', 'example.org', 'example.net'))}"
            if email not in self.emails:
                self.emails.add(email)
                return email

    def _openid(self, provider: str) -> str:
        rng = self.rng
        while True:
            if provider == "wechat":
                alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
                openid = "o" + "".join(rng.choice(alphabet) for _ in range(27))
            elif provider == "qq":
                openid = rng.randbytes(16).hex().upper()
            elif provider == "weibo":
                openid = str(rng.randrange(1_000_000_000, 7_999_999_999))
            else:
                openid = (
                    f"00{rng.randrange(10000):04d}.{rng.randbytes(16).hex()}."
                    f"{rng.randrange(10000):04d}"
                )
            if (provider, openid) not in self.openids:
                self.openids.add((provider, openid))
                return openid

    def _device_id(self) -> str:
        while True:
            if self.rng.random() < 0.4:
                device_id = str(uuid.UUID(bytes=self.rng.randbytes(16), version=4)).upper()
            else:
                device_id = self.rng.randbytes(8).hex()
            if device_id not in self.devices:
                self.devices.add(device_id)
                return device_id

    def _spelled(self, national: str) -> str:
        """A number as people type it into an address book or a checkout form."""
        grouped = f"{national[:3]} {national[3:7]} {national[7:]}"
        return self.rng.choice((
            national, national, "+86" + national, "+86 " + grouped, grouped.replace(" ", "-"),
        ))

    def _media_type(self) -> tuple[str, str]:
        media_type, ext, _ = self.rng.choices(MEDIA_TYPES, [w for *_, w in MEDIA_TYPES])[0]
        return media_type, ext

    def _browse_url(self) -> str:
        rng = self.rng
        if rng.random() < 0.15:
            return f"https://www.wishe.example.com/search?q={self.fake.word()}"
        return f"https://www.wishe.example.com/{rng.choice(BROWSE_PATHS)}/{rng.randrange(10**6)}"

    def _ip(self) -> str:
        rng = self.rng
        if rng.random() < 0.1:
            return (
                f"240e:{rng.randrange(0x1000):x}:{rng.randrange(0x10000):x}"
                f"::{rng.randrange(1, 0xFFFF):x}"
            )
        return (
            f"{rng.choice(IP_PREFIXES)}.{rng.randrange(256)}."
            f"{rng.randrange(256)}.{rng.randrange(1, 255)}"
        )

    def _comment(self) -> str:
        if self.rng.random() < 0.7:
            return self.rng.choice(CANNED_COMMENTS)
        return self.fake.sentence()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.wishe.generate", description="Build the Wishe demo world."
    )
    parser.add_argument(
        "url", nargs="?", default=os.environ.get("WISHE_DB_URL"),
        help="SQLAlchemy URL of the database to (re)build (default: $WISHE_DB_URL)",
    )
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("give a database URL or set WISHE_DB_URL")
    world = build_world(args.url, users=args.users, seed=args.seed)
    for table, count in world.counts.items():
        print(f"{table:20} {count:7d}")
    print(f"{len(world.subjects)} demo subjects: ids 1..{len(world.subjects)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
