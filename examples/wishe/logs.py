"""The Wishe app's logs, for the demo: JSON-lines application logs and an nginx access log
that mention the users of the demo database, the way real logs do.

- `app/app-2026-10-DD.jsonl` (one file per day of the week before the world's "now"; the
  oldest is rotated and gzipped): `{"ts", "level", "event", "user": {"id", "email"},
  "phone", "ip", "device"}`, emails as the user typed them, phones in the spellings the
  clients sent (`13912345678`, `+86 139-1234-5678`, `139 1234 5678`, `+8613912345678`).
- `nginx/access.log`: combined-format lines whose query strings carry `uid=`, URL-encoded
  emails (`email=zhang.wei%40example.com`) and phones (`phone=%2B8613912345678`).

Every named demo subject appears in both, so the demo's erasure has lines to find; lines of
everyone else are there to stay byte-identical. Deterministic: `seed` and the world's fixed
clock decide every byte.

    python -m examples.wishe.logs sqlite:///demo-out/wishe.db demo-out/logs
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from sqlalchemy import create_engine, select

from examples.wishe import schema
from examples.wishe.generate import EPOCH
from examples.wishe.subjects import SUBJECTS

DAYS = 7  # app logs for the week before EPOCH, one file a day
OLD_ACCESS_DAYS = 200  # a forgotten rotation of the access log, from the spring
OLD_ACCESS_LINES = 40
GZIPPED_DAYS = 1  # the oldest file(s) rotated and compressed

# The data-map fragment for these logs: add it under `systems:` (e.g. as `applogs`).
# Read from the Wishe data map, the one source of truth.
DATAMAP_SYSTEM: dict[str, Any] = yaml.safe_load(
    (Path(__file__).with_name("datamap.yaml")).read_text()
)["systems"]["applogs"]

_SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")  # nginx logs local time
EVENTS = ("login", "logout", "view_item", "search", "upload", "comment", "follow", "like",
          "checkout", "update_profile")
LEVELS = ("info", "info", "info", "info", "warn", "error")
PATHS = ("/api/v1/feed", "/api/v1/items/{n}", "/api/v1/uploads/{n}", "/api/v1/search",
         "/api/v1/orders/{n}", "/api/v1/profile")
AGENTS = (
    "Wishe/5.2.1 (iOS 17.1; iPhone15,2)",
    "Wishe/5.2.0 (Android 14; HUAWEI Mate 60 Pro)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15",
    "okhttp/4.12.0",
)


@dataclass(frozen=True)
class _User:
    id: int
    email: str | None
    phone: str | None  # as stored
    devices: tuple[str, ...]


def write_logs(folder: Path, engine_url: str, lines: int = 20000, seed: int = 7) -> dict[str, int]:
    """Write the app and access logs of the users in the Wishe database at `engine_url`
    under `folder` (`folder/app/...`, `folder/nginx/access.log`). About `lines` lines in
    all, and the OLD_ACCESS_LINES of an old rotation (`nginx/access.log.1`); returns the
    number of lines per file (paths relative to `folder`)."""
    users = _users(engine_url)
    if not users:
        raise ValueError("the database has no users: build the world first")
    rng = random.Random(seed)
    demo = [u for u in users if u.id in {s.user_id for s in SUBJECTS}]
    app_lines = lines * 2 // 3
    access_lines = lines - app_lines
    counts: dict[str, int] = {}

    (folder / "app").mkdir(parents=True, exist_ok=True)
    (folder / "nginx").mkdir(parents=True, exist_ok=True)
    per_day = max(app_lines // DAYS, 1)
    for day in range(DAYS):
        date = (EPOCH - timedelta(days=DAYS - day)).date()
        start = datetime(date.year, date.month, date.day, tzinfo=EPOCH.tzinfo)
        stamps = sorted(rng.uniform(0, 86400) for _ in range(per_day))
        body = "".join(
            _app_line(rng, _pick(rng, users, demo, i), start + timedelta(seconds=t))
            for i, t in enumerate(stamps)
        )
        name = f"app/app-{date.isoformat()}.jsonl"
        if day < GZIPPED_DAYS:
            name += ".gz"
            # mtime=0: the same seed gives the same bytes
            with open(folder / name, "wb") as raw, \
                    gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
                gz.write(body.encode())
        else:
            (folder / name).write_text(body, encoding="utf-8")
        counts[name] = per_day

    start = EPOCH - timedelta(days=1)
    stamps = sorted(rng.uniform(0, 86400) for _ in range(access_lines))
    body = "".join(
        _access_line(rng, _pick(rng, users, demo, i), start + timedelta(seconds=t))
        for i, t in enumerate(stamps)
    )
    (folder / "nginx" / "access.log").write_text(body, encoding="utf-8")
    counts["nginx/access.log"] = access_lines

    # A rotation left behind from the spring: past the policy's 180 days (3.1), so the
    # retention sweep's `access-180d` rule has something to delete. Its own generator:
    # the files above stay byte-identical whatever is done here.
    old_rng = random.Random(seed + 1)
    start = EPOCH - timedelta(days=OLD_ACCESS_DAYS)
    stamps = sorted(old_rng.uniform(0, 86400) for _ in range(OLD_ACCESS_LINES))
    body = "".join(
        _access_line(old_rng, _pick(old_rng, users, demo, i), start + timedelta(seconds=t))
        for i, t in enumerate(stamps)
    )
    (folder / "nginx" / "access.log.1").write_text(body, encoding="utf-8")
    counts["nginx/access.log.1"] = OLD_ACCESS_LINES
    return counts


def _users(engine_url: str) -> list[_User]:
    engine = create_engine(engine_url)
    try:
        with engine.connect() as conn:
            devices: dict[int, list[str]] = {}
            for user_id, device_id in conn.execute(
                select(schema.trusted_devices.c.user_id, schema.trusted_devices.c.device_id)
                .order_by(schema.trusted_devices.c.id)
            ):
                devices.setdefault(user_id, []).append(device_id)
            rows = conn.execute(
                select(schema.users.c.id, schema.users.c.email, schema.users.c.phone)
                .order_by(schema.users.c.id)
            ).all()
    finally:
        engine.dispose()
    return [_User(r.id, r.email, r.phone, tuple(devices.get(r.id, ()))) for r in rows]


def _pick(rng: random.Random, users: Sequence[_User], demo: Sequence[_User], i: int) -> _User:
    # Every 40th line is one of the named demo subjects, so each appears in every file.
    if demo and i % 40 == 0:
        return demo[(i // 40) % len(demo)]
    return rng.choice(users)


def _national(phone: str) -> str:
    digits = "".join(c for c in phone if c.isdigit())
    for prefix in ("0086", "86"):
        if len(digits) > 11 and digits.startswith(prefix):
            return digits[len(prefix):]
    return digits


def _phone_spelling(rng: random.Random, phone: str) -> str:
    n = _national(phone)
    return rng.choice((
        phone, n, "+86" + n, f"+86 {n[:3]}-{n[3:7]}-{n[7:]}", f"{n[:3]} {n[3:7]} {n[7:]}",
    ))


def _ip(rng: random.Random) -> str:
    return (f"{rng.choice((36, 58, 101, 111, 113, 116, 120, 183, 223))}."
            f"{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")


def _app_line(rng: random.Random, user: _User, when: datetime) -> str:
    record = {
        "ts": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        "level": rng.choice(LEVELS),
        "event": rng.choice(EVENTS),
        "user": {"id": user.id, "email": user.email},
        "phone": _phone_spelling(rng, user.phone) if user.phone and rng.random() < 0.6
        else None,
        "ip": _ip(rng),
        "device": rng.choice(user.devices) if user.devices else None,
        "latency_ms": rng.randrange(3, 1500),
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def _access_line(rng: random.Random, user: _User, when: datetime) -> str:
    r = rng.random()
    if r < 0.35 and user.email:
        query = f"uid={user.id}&email={quote(user.email, safe='')}"
    elif r < 0.6 and user.phone:
        query = f"uid={user.id}&phone={quote('+86' + _national(user.phone), safe='')}"
    elif r < 0.85:
        query = f"uid={user.id}&page={rng.randrange(1, 30)}"
    else:
        query = f"q=%E6%97%85%E8%A1%8C&page={rng.randrange(1, 30)}"  # no user at all
    path = rng.choice(PATHS).format(n=rng.randrange(1, 100_000))
    stamp = when.astimezone(_SHANGHAI).strftime("%d/%b/%Y:%H:%M:%S +0800")
    status = rng.choice((200, 200, 200, 200, 304, 404, 500))
    return (
        f'{_ip(rng)} - - [{stamp}] "GET {path}?{query} HTTP/1.1" {status} '
        f'{rng.randrange(200, 90_000)} "-" "{rng.choice(AGENTS)}" {rng.random():.3f}\n'
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the Wishe database (built by examples.wishe.generate)")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    counts = write_logs(args.folder, args.url, args.lines, args.seed)
    for name, n in counts.items():
        print(f"{n:>7} {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
