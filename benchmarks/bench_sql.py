"""SQL connector erasure at scale on PostgreSQL, against a hand-written set-based script.

The Wishe user database (`examples/wishe/schema.py`, every table, index and foreign key)
with N users and their rows, made in the server with `INSERT … SELECT generate_series`
in the proportions `examples/wishe/generate.py` gives a random user (its Python
generator holds every row in memory: about 65 rows a user, far too many for 1,000,000
users). M subjects, spread over the ids, each known by what a ticket gives: their email,
else their phone number. Two runs on identical copies of the data (databases made from one
template), in the same process and server:

- the baseline, what a DBA would write knowing the data: one transaction; a temporary
  table of the subjects' user ids (looked up by email and phone spellings), then per
  table, children first, `DELETE … WHERE user_id IN (SELECT id FROM subjects)`, and an
  `UPDATE` of the anonymized columns of `users` and `orders` as the data map says
  (pseudonyms as md5 in SQL; no holds, no sharing, no proof);
- dsrflow, driven as the pipeline drives it (`pipeline.steps`): `discover` (the `resolve`
  step: the identities the subjects' rows hold), `erase` with each request's pseudonymizer
  and no legal hold, then `verify` with the identities learnt, through `SqlConnector` and
  the Wishe data map (`systems.userdb`).

The two must leave the same data: per table the row count and a hash of every row (a
subject's pseudonymized values compared as "is a pseudonym"), and no subject's row left
in a deleting table. It reports seconds, the ratio (target: at most 1.5x), rows changed
and statements executed (SQLAlchemy's `before_cursor_execute`; an executemany is one).

    .venv/bin/python -m benchmarks.bench_sql                          # 1,000,000 / 10,000
    .venv/bin/python -m benchmarks.bench_sql --users 100000 --subjects 1000
    .venv/bin/python -m benchmarks.bench_sql --repeat 3               # the median of three
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from benchmarks import machine
from connectors.sql import SqlConnector
from dsrflow.crypto import Pseudonymizer, new_key
from dsrflow.datamap import REDACTION_MARKER, parse_datamap
from dsrflow.identities import Identity, IdentityType, Subject, phone_variants
from examples.wishe import schema
from examples.wishe.generate import EPOCH, FIRST_SIGNUP
from tests.postgres import postgres

DATAMAP = Path(__file__).resolve().parent.parent / "examples" / "wishe" / "datamap.yaml"
SOURCE = "wishe_source"  # the template every run's database is copied from
# The tables the baseline deletes from by `user_id`, children first (then follows, from
# both ends).
DELETES = ("third_party_logins", "trusted_devices", "location_history", "contacts",
           "face_templates", "comments", "uploads", "browsing_history")
PSEUDONYMIZED = {"users": ("email", "phone"), "orders": ("buyer_phone",)}
# Every table and column name in the statements below comes from this module or the schema
# (examples/wishe/schema.py), never from input: hence the waivers of S608.


# -- the data -------------------------------------------------------------------------------
# h(x): a deterministic number in [0, 1) for each x, so every build of N users is the same
# (and no volatile random() makes the planner evaluate a row count once for all users).
HASH_FUNCTION = """
CREATE FUNCTION h(x bigint) RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (hashint8(x)::float8 + 2147483648.0) / 4294967296.0 $$
"""


def _r(expr: str, salt: int) -> str:
    """A uniform draw for one row and one attribute (`salt` < 97 keeps draws apart)."""
    return f"h(({expr}) * 97 + {salt})"


def _pick(options: Sequence[str], expr: str, salt: int) -> str:
    """One of `options` (SQL literals), uniformly."""
    return f"(ARRAY[{', '.join(options)}])[1 + floor({_r(expr, salt)} * {len(options)})::int]"


def _q(values: Sequence[str]) -> list[str]:
    return ["'" + v.replace("'", "''") + "'" for v in values]


SURNAMES = _q(["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙"])
GIVEN = _q(["伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰"])
CITIES = _q(["北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "西安", "南京", "重庆"])
STREETS = _q(["人民路", "解放路", "中山路", "建设路", "和平街", "长江路"])


def _name(expr: str, salt: int) -> str:
    return f"{_pick(SURNAMES, expr, salt)} || {_pick(GIVEN, expr, salt + 1)}"


def _when(expr: str, salt: int, share: float, then: str) -> str:
    """`then` for a `share` of the rows, NULL for the rest."""
    return f"CASE WHEN {_r(expr, salt)} < {share} THEN {then} END"


def _between(start: str, expr: str, salt: int) -> str:
    """A time between `start` and the world's "now"."""
    return f"{start} + {_r(expr, salt)} * (TIMESTAMPTZ '{EPOCH.isoformat()}' - {start})"


def _spelled(national: str, expr: str, salt: int) -> str:
    """A number as people type it into an address book or a checkout form."""
    n = national
    return _pick([n, n, f"'+86' || {n}", f"'+86 ' || substr({n}, 1, 3) || ' ' || substr({n}, 4, 4)"
                  f" || ' ' || substr({n}, 8)",
                  f"substr({n}, 1, 3) || '-' || substr({n}, 4, 4) || '-' || substr({n}, 8)"],
                 expr, salt)


def _other_phone(expr: str, salt: int) -> str:
    """A Chinese mobile number no user of the world has (139…)."""
    return f"(13900000000 + floor({_r(expr, salt)} * 99999999)::bigint)::text"


# Rows per user, as `examples/wishe/generate.py` draws them for a random user: the largest
# count, and the count of the user whose id is the SQL expression given.
PER_USER: dict[str, tuple[int, Callable[[str], str]]] = {
    "third_party_logins": (2, lambda u: f"CASE WHEN {_r(u, 1)} < 0.35 THEN 0 "
                                        f"WHEN {_r(u, 1)} < 0.85 THEN 1 ELSE 2 END"),
    "trusted_devices": (3, lambda u: f"CASE WHEN {_r(u, 2)} < 0.6 THEN 1 "
                                     f"WHEN {_r(u, 2)} < 0.9 THEN 2 ELSE 3 END"),
    "location_history": (30, lambda u: f"CASE WHEN {_r(u, 3)} < 0.7 "
                                       f"THEN 3 + floor({_r(u, 4)} * 28)::int ELSE 0 END"),
    "contacts": (25, lambda u: f"CASE WHEN {_r(u, 5)} < 0.6 "
                               f"THEN 3 + floor({_r(u, 6)} * 23)::int ELSE 0 END"),
    "face_templates": (1, lambda u: f"CASE WHEN {_r(u, 7)} < 0.25 THEN 1 ELSE 0 END"),
    "uploads": (10, lambda u: f"floor({_r(u, 8)} * 11)::int"),
    "browsing_history": (40, lambda u: f"5 + floor({_r(u, 9)} * 36)::int"),
    "orders": (5, lambda u: _pick(["0", "0", "1", "2", "3", "5"], u, 10)),
    "follows": (12, lambda u: f"floor({_r(u, 11)} * 13)::int"),
    "comments": (12, lambda u: f"floor({_r(u, 12)} * 13)::int"),
}
GENDERS = ["'male'", "'female'", "NULL"]


def _columns() -> dict[str, dict[str, str]]:
    """Per table, each column's SQL over `u` (the user's id), `c` (their created_at) and
    `k` (the row's number for that user, from 1); `x` is one number per row. Row ids are
    (k - 1) * N + u: a user's rows are spread over the table, as years of other users'
    activity spread them in a real one. N is the bound parameter `:n`, and `:stride` the
    followees' largest stride (`_sizes`)."""
    x = "(k::bigint * :n + u)"
    row_id = "(k - 1) * :n + u"
    nat = "(13000000000 + u)::text"  # every user's own mobile number: 130…, unique
    # A comment on an upload: a random user's upload, if they have any (ids as above).
    v = f"(1 + floor({_r(x, 40)} * :n)::bigint)"
    v_uploads = PER_USER["uploads"][1](v)
    tpl_provider = ("(ARRAY['wechat','qq','weibo','apple'])"
                    f"[1 + ((floor({_r('u', 13)} * 4)::int + k - 1) % 4)]")
    md5 = "md5('{}' || u || '-' || k)"
    return {
        "users": {
            "id": "u",
            "phone": _pick([nat, nat, f"'+86' || {nat}", f"'86' || {nat}"], "u", 20),
            "email": _when("u", 21, 0.7, f"CASE WHEN {_r('u', 22)} < 0.2 THEN 'User' || u || "
                           "'@Example.' ELSE 'user' || u || '@example.' END || "
                           f"{_pick(_q(['com', 'org', 'net']), 'u', 23)}"),
            "password_hash": _when("u", 24, 0.8, "'$argon2id$v=19$m=65536,t=3,p=4$' || "
                                   "substr(md5('s' || u), 1, 22) || '$' || md5('d' || u)"),
            "birthday": _when("u", 25, 0.6, f"DATE '1960-01-01' + floor({_r('u', 26)} * "
                              "48 * 365)::int"),
            "gender": _pick(GENDERS, "u", 27),
            "unit_name": _when("u", 28, 0.3, f"{_pick(CITIES, 'u', 29)} || '某某科技有限公司'"),
            "created_at": (f"TIMESTAMPTZ '{FIRST_SIGNUP.isoformat()}' + {_r('u', 30)} * "
                           f"(TIMESTAMPTZ '{EPOCH.isoformat()}' - interval '3 days' - "
                           f"TIMESTAMPTZ '{FIRST_SIGNUP.isoformat()}')"),
        },
        "third_party_logins": {
            "id": row_id, "user_id": "u", "provider": tpl_provider,
            # Unique per (user, k), so per (provider, openid) too.
            "openid": (f"CASE {tpl_provider} WHEN 'wechat' THEN 'o' || substr({md5.format('w')}"
                       f", 1, 27) WHEN 'qq' THEN upper({md5.format('q')}) WHEN 'weibo' THEN "
                       f"(1000000000 + {x})::text ELSE '001234.' || {md5.format('a')} || "
                       "'.0123' END"),
            "nickname": _name(x, 41),
            "avatar_url": f"'https://avatar.example.com/' || {tpl_provider} || '/' || "
                          f"substr({md5.format('v')}, 1, 24) || '/132'",
            "region": f"CASE WHEN {tpl_provider} <> 'apple' AND {_r(x, 43)} >= 0.2 THEN "
                      f"'中国 ' || {_pick(CITIES, 'u', 29)} END",
            "gender": f"CASE WHEN {tpl_provider} <> 'apple' THEN "
                      f"{_pick(GENDERS, 'u', 27)} END",
            "email": f"CASE WHEN {tpl_provider} = 'apple' THEN substr({md5.format('e')}, 1, 10)"
                     f" || '@privaterelay.example.com' WHEN {_r(x, 44)} < 0.3 THEN "
                     f"'user' || u || '@example.com' END",
        },
        "trusted_devices": {
            "id": row_id, "user_id": "u",
            # identifierForVendor (a UUID) for iOS, ANDROID_ID (16 hex) otherwise: unique.
            "device_id": (f"CASE WHEN {_r(x, 45)} < 0.4 THEN upper(({md5.format('i')})::uuid"
                          f"::text) ELSE substr({md5.format('i')}, 1, 16) END"),
            "name": _pick(_q(["iPhone 15", "iPhone 13", "HUAWEI Mate 60 Pro", "Xiaomi 14",
                              "OPPO Find X7", "vivo X100"]), x, 46),
            "type": f"CASE WHEN {_r(x, 47)} < 0.1 THEN 'tablet' ELSE 'phone' END",
            "last_used_at": _between("c", x, 48),
        },
        "location_history": {
            "id": row_id, "user_id": "u",
            "latitude": f"round((22 + {_r('u', 49)} * 18 + {_r(x, 50)} * 0.16)::numeric, 6)",
            "longitude": f"round((104 + {_r('u', 51)} * 17 + {_r(x, 52)} * 0.16)::numeric, 6)",
            "recorded_at": _between("c", x, 53),
        },
        "contacts": {
            "id": row_id, "user_id": "u", "contact_name": _name(x, 54),
            "contact_phone": _spelled(_other_phone(x, 56), x, 57),
        },
        "face_templates": {
            "id": row_id, "user_id": "u",
            "template": f"decode(repeat({md5.format('f')}, 32), 'hex')",  # 512 bytes
            "object_key": f"'faces/' || u || '/' || ({md5.format('g')})::uuid || '.jpg'",
            "created_at": _between("c", x, 58),
        },
        "uploads": {
            "id": row_id, "user_id": "u",
            "s3_key": (f"'uploads/' || u || '/' || to_char({_between('c', x, 59)}, "
                       f"'YYYY/MM') || '/' || substr({md5.format('s')}, 1, 16) || "
                       f"{_pick(_q(['.jpg', '.jpg', '.heic', '.mp4']), x, 60)}"),
            "media_type": _pick(_q(["image/jpeg", "image/jpeg", "image/heic", "video/mp4"]),
                                x, 60),
            "created_at": _between("c", x, 59),
        },
        "comments": {
            "id": row_id, "user_id": "u",
            "upload_id": (f"CASE WHEN {_r(x, 61)} < 0.9 AND {v_uploads} > 0 THEN "
                          f"floor({_r(x, 62)} * {v_uploads})::int * :n + {v} END"),
            "body": _pick(_q(["好看！", "太美了", "在哪里拍的？", "求链接", "哈哈哈哈哈", "赞👍",
                              "下次一起去", "这个颜色绝了", "收藏了", "同款！"]), x, 63),
            "created_at": _between("c", x, 64),
        },
        "browsing_history": {
            "id": row_id, "user_id": "u",
            "url": (f"'https://www.wishe.example.com/' || "
                    f"{_pick(_q(['item', 'topic', 'user', 'live', 'collection']), x, 65)} "
                    f"|| '/' || floor({_r(x, 66)} * 1000000)::int"),
            "viewed_at": _between("c", x, 67),
            "ip_address": (f"CASE WHEN {_r(x, 68)} < 0.1 THEN '240e:' || "
                           f"to_hex(floor({_r(x, 69)} * 4096)::int) || '::' || "
                           f"to_hex(1 + floor({_r(x, 70)} * 65534)::int) ELSE "
                           f"{_pick(['36', '58', '101', '111', '113', '116', '120', '183'], x, 71)}"
                           f" || '.' || floor({_r(x, 72)} * 256)::int || '.' || "
                           f"floor({_r(x, 73)} * 256)::int || '.' || "
                           f"(1 + floor({_r(x, 74)} * 254)::int) END"),
        },
        "follows": {
            # k * stride over the ids, stride <= (N - 1) / 12: distinct followees, never
            # the follower.
            "follower_id": "u",
            "followee_id": (f"1 + (u - 1 + k * (1 + floor({_r('u', 75)} * "
                            f":stride)::bigint)) % :n"),
            "created_at": _between("c", x, 76),
        },
        "orders": {
            "id": row_id, "user_id": "u",
            "amount": f"(990 + floor({_r(x, 77)} * 258910))::numeric / 100",
            # One order in seven is a gift, shipped to somebody else.
            "buyer_name": f"CASE WHEN {_r(x, 78)} < 0.15 THEN {_name(x, 79)} "
                          f"ELSE {_name('u', 81)} END",
            "buyer_phone": _spelled(f"CASE WHEN {_r(x, 78)} < 0.15 THEN "
                                    f"{_other_phone(x, 83)} ELSE {nat} END", x, 84),
            "shipping_address": f"{_pick(CITIES, 'u', 29)} || {_pick(STREETS, x, 85)} || "
                                f"floor(1 + {_r(x, 86)} * 999)::int || '号'",
            "created_at": _between("c", x, 87),
        },
    }


@contextmanager
def _constraints_later(conn: sa.Connection, tables: Sequence[str]) -> Iterator[None]:
    """Drop the tables' indexes and constraints, and put them back afterwards: one build
    of each index over the loaded rows instead of an insert into it per row. The schema is
    what `schema.metadata` made, definitions read back from the catalog."""
    names = list(tables)
    constraints = conn.execute(sa.text(
        "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE conrelid = ANY(CAST(:t AS regclass[]))"), {"t": names}).all()
    indexes = conn.execute(sa.text(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index i "
        "WHERE indrelid = ANY(CAST(:t AS regclass[])) AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"),
        {"t": names}).all()
    # Foreign keys first: they depend on the referenced keys' unique indexes.
    for table, name, kind, _ in sorted(constraints, key=lambda c: c[2] != "f"):
        if kind in ("f", "p", "u"):
            conn.execute(sa.text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
    for name, _ in indexes:
        conn.execute(sa.text(f"DROP INDEX {name}"))
    yield
    for table, name, kind, definition in sorted(constraints, key=lambda c: c[2] == "f"):
        if kind in ("f", "p", "u"):
            conn.execute(sa.text(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'))
    for _, definition in indexes:
        conn.execute(sa.text(definition))


def _sizes(users: int) -> dict[str, int]:
    """The values `_columns`' SQL binds: the number of users, and the largest stride of a
    user's followees over the ids (k * stride < N: distinct followees, never the
    follower)."""
    return {"n": users, "stride": max((users - 1) // 12 - 1, 0)}


def load(admin: str, users: int) -> tuple[str, dict[str, int]]:
    """The source database, filled; returns its URL and the row count of each table."""
    if users < 1000:
        raise SystemExit("--users must be at least 1000")
    _admin(admin, f'DROP DATABASE IF EXISTS "{SOURCE}"', f'CREATE DATABASE "{SOURCE}"')
    url = _url(admin, SOURCE)
    engine = sa.create_engine(url)
    schema.metadata.create_all(engine)
    columns = _columns()
    sizes = _sizes(users)
    with engine.begin() as conn:
        conn.execute(sa.text(HASH_FUNCTION))
        with _constraints_later(conn, list(schema.metadata.tables)):
            users_cols = columns["users"]
            conn.execute(sa.text(
                f"INSERT INTO users ({', '.join(users_cols)}) SELECT "  # noqa: S608
                f"{', '.join(users_cols.values())} FROM generate_series(1, :n) u"), sizes)
            for table, (most, count) in PER_USER.items():
                cols = columns[table]
                # k outermost, one pass over the users per k (OFFSET 0 keeps the planner
                # from turning the loop inside out), so a user's rows are spread.
                conn.execute(sa.text(
                    f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(cols.values())}"  # noqa: S608
                    " FROM generate_series(1, :most) k CROSS JOIN LATERAL (SELECT id AS u, "
                    f"created_at AS c FROM users WHERE k <= {count('id')} OFFSET 0) s"),
                    {**sizes, "most": most})
        conn.execute(sa.text("DROP FUNCTION h(bigint)"))
    counts = _counts(engine)
    engine.dispose()
    _admin(url, "VACUUM (ANALYZE, FREEZE)")
    return url, counts


def _counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()  # noqa: S608
                for t in schema.metadata.tables}


def _url(admin: str, database: str) -> str:
    return admin.rsplit("/", 1)[0] + f"/{database}"


def _admin(url: str, *statements: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    engine.dispose()


def copy(admin: str, name: str) -> str:
    """A fresh copy of the source (a file copy of the template: every run starts from the
    same pages, statistics and visibility map)."""
    _admin(admin, f'DROP DATABASE IF EXISTS "{name}"',
           f'CREATE DATABASE "{name}" TEMPLATE "{SOURCE}" STRATEGY FILE_COPY')
    return _url(admin, name)


# -- the subjects ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Picked:
    user_id: int
    email: str | None
    phone: str  # as stored


def pick(url: str, users: int, subjects: int) -> list[Picked]:
    """Subjects spread evenly over the ids."""
    ids = sorted({1 + (i * users) // subjects for i in range(subjects)})
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, email, phone FROM users WHERE id = ANY(:ids) "
                                    "ORDER BY id"), {"ids": ids}).all()
    engine.dispose()
    return [Picked(r.id, r.email, r.phone) for r in rows]


def tickets(picked: Sequence[Picked]) -> list[Subject]:
    """What each request starts with: the email the ticket came from, else the phone."""
    out = []
    for i, p in enumerate(picked):
        identity = (Identity.read(IdentityType.EMAIL, p.email) if p.email
                    else Identity.read(IdentityType.PHONE, p.phone, "CN"))
        out.append(Subject(request_id=f"r{i:06d}", identities=(identity,), phone_region="CN"))
    return out


# -- counting statements --------------------------------------------------------------------
@dataclass
class Statements:
    count: int = 0
    rows: int = 0  # parameter sets: an executemany of n rows is one statement, n rows

    def listen(self, engine: sa.Engine) -> None:
        def counted(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                    executemany: bool) -> None:
            self.count += 1
            self.rows += len(parameters) if executemany else 1

        sa.event.listen(engine, "before_cursor_execute", counted)


@dataclass
class Run:
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    deleted: int = 0  # as the run reports it (dsrflow: per request, a follow of two
    anonymized: int = 0  # subjects of the batch counts for each)
    statements: int = 0
    executed: int = 0  # including each row of an executemany
    remaining: int = 0
    left: int = 0  # rows in the database afterwards


# -- the baseline ---------------------------------------------------------------------------
def baseline(url: str, subjects: Sequence[Subject]) -> Run:
    emails = [i.value for s in subjects for i in s.identities if i.type is IdentityType.EMAIL]
    phones = [v for s in subjects for i in s.identities if i.type is IdentityType.PHONE
              for v in phone_variants(i.value, "CN")]
    engine = sa.create_engine(url)
    counted = Statements()
    counted.listen(engine)
    run = Run()
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TEMP TABLE subjects (id integer PRIMARY KEY) ON COMMIT DROP"))
        conn.execute(sa.text(
            "INSERT INTO subjects SELECT id FROM users WHERE lower(trim(email)) = ANY(:emails) "
            "OR phone = ANY(:phones)"), {"emails": emails, "phones": phones})
        conn.execute(sa.text("ANALYZE subjects"))
        for table in DELETES:
            run.deleted += conn.execute(sa.text(
                f"DELETE FROM {table} WHERE user_id IN (SELECT id FROM subjects)")).rowcount  # noqa: S608
        run.deleted += conn.execute(sa.text(
            "DELETE FROM follows WHERE follower_id IN (SELECT id FROM subjects) "
            "OR followee_id IN (SELECT id FROM subjects)")).rowcount
        # Pseudonyms under a key of the run (md5 stands in for the keyed HMAC).
        run.anonymized += conn.execute(sa.text(
            "UPDATE orders SET buyer_name = CASE WHEN buyer_name IS NOT NULL THEN :marker END, "
            "buyer_phone = 'pn_' || substr(md5(:key || buyer_phone), 1, 24), "
            "shipping_address = CASE WHEN shipping_address IS NOT NULL THEN :marker END "
            "WHERE user_id IN (SELECT id FROM subjects)"),
            {"marker": REDACTION_MARKER, "key": new_key().hex()}).rowcount
        run.anonymized += conn.execute(sa.text(
            "UPDATE users SET phone = 'pn_' || substr(md5(:key || phone), 1, 24), "
            "email = 'pn_' || substr(md5(:key || email), 1, 24), password_hash = NULL, "
            "birthday = date_trunc('year', birthday)::date, gender = NULL, unit_name = NULL, "
            "created_at = date_trunc('month', created_at) "
            "WHERE id IN (SELECT id FROM subjects)"), {"key": new_key().hex()}).rowcount
    run.seconds = time.perf_counter() - started
    run.statements, run.executed = counted.count, counted.rows
    engine.dispose()
    return run


# -- dsrflow --------------------------------------------------------------------------------
def dsrflow(url: str, subjects: Sequence[Subject], batch: int) -> Run:
    doc = yaml.safe_load(DATAMAP.read_text())
    userdb = doc["systems"]["userdb"]
    del userdb["url_env"]
    userdb["url"] = url
    system = parse_datamap(doc).sql("userdb")
    engine = sa.create_engine(url, pool_pre_ping=True)  # as SqlConnector makes its own
    connector = SqlConnector("userdb", system, engine)
    counted = Statements()
    counted.listen(engine)  # after the reflection: only the requests' statements count
    keys = {s.request_id: Pseudonymizer(new_key()) for s in subjects}
    run = Run()
    phases: dict[str, float] = defaultdict(float)
    size = batch or len(subjects)
    for start in range(0, len(subjects), size):
        group = subjects[start:start + size]
        began = time.perf_counter()
        # The resolve step: the identities the subjects' own rows hold join the request's.
        found = connector.discover(group)
        group = [s.model_copy(update={"identities": (*s.identities, *sorted(
            found[s.request_id].found - set(s.identities), key=lambda i: (i.type, i.value)))})
            for s in group]
        resolved = time.perf_counter()
        erased = connector.erase(group, None, keys, held={})
        done = time.perf_counter()
        verified = connector.verify(group, None, held={})
        ended = time.perf_counter()
        phases["resolve"] += resolved - began
        phases["erase"] += done - resolved
        phases["verify"] += ended - done
        run.deleted += sum(o.total("deleted") for o in erased.values())
        run.anonymized += sum(o.total("anonymized") for o in erased.values())
        run.remaining += sum(o.total("remaining") for o in verified.values())
    run.phases = dict(phases)
    run.seconds = sum(phases.values())
    run.statements, run.executed = counted.count, counted.rows
    connector.dispose()
    return run


# -- the same result ------------------------------------------------------------------------
def fingerprint(url: str, picked: Sequence[Picked]) -> dict[str, tuple[int, int]]:
    """Per table: the row count and a sum of row hashes. A subject's pseudonymized column
    counts as whether it holds a pseudonym (the two runs' keys differ)."""
    ids = [p.user_id for p in picked]
    engine = sa.create_engine(url)
    out = {}
    with engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            owner = "id" if table.name == "users" else "user_id"
            row = ", ".join(
                f"CASE WHEN {owner} = ANY(:ids) THEN ({c.name} ~ '^pn_[0-9a-f]{{24}}$')::text "
                f"ELSE {c.name} END" if c.name in PSEUDONYMIZED.get(table.name, ()) else c.name
                for c in table.columns)
            count, total = conn.execute(sa.text(
                f"SELECT count(*), coalesce(sum(hashtext(ROW({row})::text)::bigint), 0) "  # noqa: S608
                f"FROM {table.name}"), {"ids": ids}).one()
            out[table.name] = (int(count), int(total))
    engine.dispose()
    return out


def leftovers(url: str, picked: Sequence[Picked]) -> int:
    """Rows of a subject still in a deleting table, or still holding what erasure
    replaces."""
    ids = [p.user_id for p in picked]
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        left = sum(conn.execute(sa.text(
            f"SELECT count(*) FROM {t} WHERE user_id = ANY(:ids)"), {"ids": ids}).scalar_one()  # noqa: S608
            for t in DELETES)
        left += conn.execute(sa.text(
            "SELECT count(*) FROM follows WHERE follower_id = ANY(:ids) "
            "OR followee_id = ANY(:ids)"), {"ids": ids}).scalar_one()
        left += conn.execute(sa.text(
            "SELECT count(*) FROM users WHERE id = ANY(:ids) AND (phone !~ '^pn_' "
            "OR email !~ '^pn_' OR password_hash IS NOT NULL OR gender IS NOT NULL "
            "OR unit_name IS NOT NULL)"), {"ids": ids}).scalar_one()
        left += conn.execute(sa.text(
            "SELECT count(*) FROM orders WHERE user_id = ANY(:ids) AND (buyer_phone !~ '^pn_' "
            "OR buyer_name <> :marker OR shipping_address <> :marker)"),
            {"ids": ids, "marker": REDACTION_MARKER}).scalar_one()
    engine.dispose()
    return int(left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=0,
                        help="subjects per connector call (default: all, one micro-batch)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of the two runs, in turn; the median time is reported")
    args = parser.parse_args()
    runs: dict[str, list[Run]] = {"base": [], "dsrflow": []}
    settings = ("-c shared_buffers=2GB -c work_mem=64MB -c maintenance_work_mem=1GB "
                "-c max_wal_size=16GB -c checkpoint_timeout=1h")
    with postgres(settings) as admin:
        began = time.perf_counter()
        source, counts = load(admin, args.users)
        loaded = time.perf_counter() - began
        picked = pick(source, args.users, args.subjects)
        subjects = tickets(picked)
        for _ in range(args.repeat):  # in turn, so that a busy spell hits both alike
            prints = {}
            for key, run in (("base", lambda url: baseline(url, subjects)),
                             ("dsrflow", lambda url: dsrflow(url, subjects, args.batch))):
                url = copy(admin, f"run_{key}")
                result = run(url)
                prints[key], left = fingerprint(url, picked), leftovers(url, picked)
                _admin(admin, f'DROP DATABASE "run_{key}"')
                if left:
                    raise SystemExit(f"{key}: {left} rows of the subjects left as they were")
                result.left = sum(count for count, _ in prints[key].values())
                runs[key].append(result)
            differ = sorted(t for t in prints["base"] if prints["base"][t] != prints["dsrflow"][t])
            if differ:
                raise SystemExit(f"the runs left different data in {', '.join(differ)}")
    seconds = {k: statistics.median(r.seconds for r in v) for k, v in runs.items()}
    ours = runs["dsrflow"][-1]
    phases = {p: statistics.median(r.phases[p] for r in runs["dsrflow"]) for p in ours.phases}
    print(f"# {args.users:,} users, {sum(counts.values()):,} rows in {len(counts)} tables "
          f"(made in {loaded:.0f} s); {len(subjects):,} subjects by email or phone, "
          f"{'one batch' if not args.batch else f'batches of {args.batch:,}'}")
    print("# rows: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
          f"{machine(f'SQLAlchemy {sa.__version__}')}; PostgreSQL server started by "
          "tests/postgres.py (fsync off, shared_buffers=2GB)")
    if args.repeat > 1:
        print(f"# seconds: the median of {args.repeat} rounds; each round (s): " + "; ".join(
            f"{k} " + ", ".join(f"{r.seconds:.2f}" for r in v) for k, v in runs.items()))
    print("# both runs left the same data: row counts and row hashes equal in every table, "
          "no subject row left")
    print()
    print("| run | seconds | rows deleted | rows anonymized | statements | executed "
          "(executemany rows) | remaining |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for key, what in (("base", "hand-written set-based SQL"),
                      ("dsrflow", "dsrflow: resolve, erase, verify")):
        r = runs[key][-1]
        print(f"| {what} | {seconds[key]:.2f} | {sum(counts.values()) - r.left:,} | "
              f"{r.anonymized:,} | {r.statements:,} | {r.executed:,} | "
              f"{r.remaining if key != 'base' else '-'} |")
    print()
    print(f"rows deleted: counted in the database; dsrflow's requests report {ours.deleted:,} "
          "(a row two subjects share counts for each)")
    print("dsrflow phases (s): " + ", ".join(f"{p} {s:.2f}" for p, s in phases.items())
          + f"; erase alone / baseline: {phases['erase'] / seconds['base']:.2f}x")
    ratio = seconds["dsrflow"] / seconds["base"]
    print(f"dsrflow / baseline: {ratio:.2f}x (target at most 1.5x): "
          f"{'met' if ratio <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
