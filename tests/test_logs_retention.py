"""Retention sweeps of log sources (policy 3.1: access logs are kept 180 days, then their
lines deleted), on real files in tmp_path and on moto's S3 server: exactly the dated,
expired lines no hold keeps go, every other byte stays, in order; times in every zone and
format the rule reads; whole files by their last write; gzip, hard links, versioned
buckets, an active log, a crash and its rerun; the dry run predicts the sweep; a second
sweep changes nothing."""

from __future__ import annotations

import gzip
import json
import os
import random
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.logs import LogsConnector, LogsError
from connectors.logs import connector as logs_connector
from connectors.logs import retention as logs_retention
from connectors.logs import rewrite as logs_rewrite
from connectors.logs.retention import (
    HeldLine,
    HoldUnreadable,
    LogsExpired,
    LogsSwept,
    expired,
    sweep,
)
from connectors.logs.times import text_time
from dsrflow.datamap import LogRetentionRule, LogsSystem, parse_datamap
from dsrflow.identities import IdentityType

CUTOFF = datetime(2026, 6, 8, tzinfo=UTC)  # 180 days before 2026-12-05
APP = {"path": "logs/app/*.jsonl*", "format": "jsonl",
       "fields": {"user.id": "user_id", "user.email": "email"}}
ACCESS = {"path": "logs/nginx/access.log*", "format": "text", "identities": ["email"]}
APP_RULE = {"name": "app-180d", "source": "app", "after_days": 180,
            "counts_from": "line_timestamp", "timestamp_field": "meta.ts"}
ACCESS_RULE = {"name": "access-180d", "source": "access", "after_days": 180,
               "counts_from": "line_timestamp"}


def datamap_doc(sources: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": "t1", "policy_version": "p1", "systems": {"applogs": {
        "kind": "logs", "sources": sources, "retention": rules}}}


def logs(base: Path, sources: dict[str, Any] | None = None,
         rules: list[dict[str, Any]] | None = None, client: Any = None,
         ) -> tuple[LogsConnector, dict[str, LogRetentionRule]]:
    doc = datamap_doc(sources or {"app": APP, "access": ACCESS},
                      rules if rules is not None else [APP_RULE, ACCESS_RULE])
    system = parse_datamap(doc, "datamap.yaml").systems["applogs"]
    assert isinstance(system, LogsSystem)
    connector = LogsConnector("applogs", system, base_dir=base, state_dir=base / ".state",
                              client=client)
    return connector, {r.name: r for r in system.retention}


def holding(user_ids: Collection[str] = (), emails: Collection[str] = ()) -> HeldLine:
    """A hold's callback as the pipeline builds one: each value normalized (here: e-mail
    addresses case-folded), then compared."""

    def held(found: Sequence[tuple[IdentityType, str]]) -> bool:
        return any((kind is IdentityType.USER_ID and raw in user_ids)
                   or (kind is IdentityType.EMAIL and raw.casefold() in emails)
                   for kind, raw in found)

    return held


def content(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under `root` but the sweep's own state: bytes, inode, mtime."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and ".state" not in p.parts}


def write(path: Path, data: bytes, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)


# -- 1. property: exactly the dated, expired, non-held lines go -----------------------------
USERS = [(f"u{i}", f"user{i}@example.com") for i in range(6)]
ZONES = [timezone(timedelta(hours=8)), timezone(timedelta(hours=-5)),
         timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-9, minutes=-30))]
FORMATS = ["iso_z", "iso_offset", "iso_naive", "iso_nanos", "iso_space_offset", "comma",
           "epoch_s", "epoch_ms", "epoch_fraction", "date_only"]
UNDATED = ["missing", "garbage", "null", "zero", "not_json", "boolean"]


@dataclass(frozen=True)
class Line:
    text: str
    instant: datetime | None  # None: undated; blank lines are not lines
    user: int | None  # whose identities the line's fields hold
    blank: bool = False


def _render(kind: str, at: datetime, ms: int, zone: timezone) -> tuple[Any, datetime]:
    """A time in one format, and the instant the sweep must read from it."""
    t = at + timedelta(milliseconds=ms)
    seconds = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1)
    match kind:
        case "iso_z":
            return f"{t:%Y-%m-%dT%H:%M:%S}.{ms:03d}Z", t
        case "iso_offset":
            return t.astimezone(zone).isoformat(timespec="milliseconds"), t
        case "iso_naive":
            return f"{at:%Y-%m-%dT%H:%M:%S}", at
        case "iso_nanos":  # read to the microsecond; the cutoff is on a whole second
            return f"{t:%Y-%m-%dT%H:%M:%S}.{ms:03d}456789Z", t + timedelta(microseconds=456)
        case "iso_space_offset":
            local = at.astimezone(zone)
            offset = local.utcoffset()
            assert offset is not None
            sign = "-" if offset < timedelta(0) else "+"
            off = abs(offset) // timedelta(minutes=1)
            return f"{local:%Y-%m-%d %H:%M:%S} {sign}{off // 60:02d}{off % 60:02d}", at
        case "comma":
            return f"{t:%Y-%m-%d %H:%M:%S},{ms:03d}", t
        case "epoch_s":
            return seconds, at
        case "epoch_ms":
            return seconds * 1000 + ms, t
        case "epoch_fraction":
            return json.loads(f"{seconds}.{ms:03d}"), t  # a float: exact to the millisecond
        case _:  # date_only: the day's last instant
            return f"{at:%Y-%m-%d}", datetime.combine(at.date(), datetime.max.time(), UTC)


@st.composite
def _line(draw: st.DrawFn, n: int) -> Line:
    kind = draw(st.sampled_from(FORMATS + UNDATED + ["blank"]))
    if kind == "blank":
        return Line(draw(st.sampled_from(["", "  ", "\t"])), None, None, blank=True)
    user = draw(st.none() | st.integers(0, len(USERS) - 1))
    fields: dict[str, Any] = {"level": draw(st.sampled_from(["info", "warn"])), "n": n}
    if user is not None:
        uid, email = USERS[user]
        which = draw(st.sampled_from(["id", "email", "both", "email_upper", "text"]))
        fields["user"] = {
            "id": {"id": uid}, "email": {"email": email}, "both": {"id": uid, "email": email},
            "email_upper": {"email": email.upper()},
            "text": {"email": f"login by {email} from web"},
        }[which]
    delta = draw(st.sampled_from([-1, 0, 1]) | st.integers(-3 * 86400, 3 * 86400))
    at = CUTOFF + timedelta(seconds=delta)
    ms = draw(st.integers(0, 999))
    instant: datetime | None = None
    if kind in FORMATS:
        value, instant = _render(kind, at, ms, draw(st.sampled_from(ZONES)))
        line: dict[str, Any] = {"meta": {"ts": value, "host": "web-1"}, **fields}
    elif kind == "missing":
        line = {"meta": {"host": "web-1"}, **fields}
    elif kind == "garbage":
        line = {"meta": {"ts": "yesterday"}, **fields}
    elif kind == "null":
        line = {"meta": {"ts": None}, **fields}
    elif kind == "zero":
        line = {"meta": {"ts": 0}, **fields}
    elif kind == "boolean":
        line = {"meta": {"ts": True}, **fields}
    else:  # not_json: a time in it, but not in the field the rule reads
        return Line(f"panic at 2020-01-01T00:00:00Z: user {n}", None, None)
    text = json.dumps(line, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    return Line(text + draw(st.sampled_from(["", "", "\r"])), instant, user)


@st.composite
def _world(draw: st.DrawFn) -> tuple[list[tuple[list[Line], bool, bool]], set[int], bool]:
    lines = [draw(_line(i)) for i in range(draw(st.integers(1, 40)))]
    n_files = draw(st.integers(1, 3))
    owner = [draw(st.integers(0, n_files - 1)) for _ in lines]
    files = []
    for k in range(n_files):
        mine = [line for line, o in zip(lines, owner, strict=True) if o == k]
        if not mine:
            mine = [draw(_line(1000 + k))]
        final_newline = draw(st.booleans()) or mine[-1].text == ""
        files.append((mine, draw(st.booleans()), final_newline))
    held = draw(st.sets(st.integers(0, len(USERS) - 1)))
    return files, held, draw(st.booleans())


def _bytes(lines: list[Line], final_newline: bool) -> bytes:
    return ("\n".join(x.text for x in lines) + ("\n" if final_newline else "")).encode()


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(world=_world())
def test_property_exactly_the_dated_expired_unheld_lines_go(
    tmp_path_factory: pytest.TempPathFactory, world: Any,
) -> None:
    files, held_users, hold = world
    base = tmp_path_factory.mktemp("prop")
    c, rules = logs(base)
    rule = rules["app-180d"]
    held = holding({USERS[i][0] for i in held_users}, {USERS[i][1] for i in held_users}) \
        if hold else None
    expect: dict[Path, bytes | None] = {}
    cut = kept_held = undated = deleted = 0
    oldest: datetime | None = None
    for k, (lines, gz, final_newline) in enumerate(files):
        path = base / f"logs/app/app-2026-06-0{k + 1}.jsonl{'.gz' if gz else ''}"
        write(path, _bytes(lines, final_newline), gz)
        pieces, file_cut, file_kept = [], 0, 0
        for i, line in enumerate(lines):
            ending = "\n" if i < len(lines) - 1 or final_newline else ""
            expired_line = line.instant is not None and line.instant < CUTOFF
            if expired_line:
                assert line.instant is not None
                oldest = line.instant if oldest is None else min(oldest, line.instant)
            if expired_line and not (hold and line.user in held_users):
                file_cut += 1
                continue
            pieces.append(line.text + ending)
            if line.blank:
                continue
            file_kept += 1
            if expired_line:
                kept_held += 1
            elif line.instant is None:
                undated += 1
        cut += file_cut
        gone = file_cut > 0 and file_kept == 0
        deleted += gone
        expect[path] = None if gone else "".join(pieces).encode()

    predicted = expired(c, rule, CUTOFF, held)
    assert predicted == LogsExpired(lines=cut + kept_held, files=deleted, held=kept_held,
                                    undated=undated, oldest=oldest)
    swept = sweep(c, rule, CUTOFF, held)

    assert (swept.lines, swept.files, swept.held, swept.undated) == (
        cut, deleted, kept_held, undated)
    for path, data in expect.items():
        if data is None:
            assert not path.exists()
        else:
            assert content(path) == data  # the others byte for byte, in order
            assert (path.read_bytes()[:2] == b"\x1f\x8b") == path.name.endswith(".gz")
    before = snapshot(base)
    again = sweep(c, rule, CUTOFF, held)
    assert (again.lines, again.files, again.held, again.undated) == (0, 0, kept_held, undated)
    assert snapshot(base) == before
    assert expired(c, rule, CUTOFF, held).lines == kept_held
    assert not list((base / "logs/app").glob(".*"))  # no temporary file left
    assert not list((base / ".state").glob("erase-*.jsonl"))


# -- 2. nginx access logs by their own times; whole files by their last write ----------------
def _nginx(ip: str, when: str, request: str, status: int = 200) -> str:
    return (f'{ip} - - [{when}] "{request} HTTP/1.1" {status} 512 "-" '
            '"Wishe/5.2.1 (iOS 17.1; iPhone15,2)"')


def test_nginx_access_lines_by_their_clf_time_in_its_zone(tmp_path: Path) -> None:
    cutoff = datetime(2026, 6, 7, 16, 0, tzinfo=UTC)  # 2026-06-08 00:00 in Shanghai
    old = [_nginx("203.0.113.7", f"{d:02d}/May/2026:10:00:00 +0800",
                  f"GET /api/v1/feed?uid={d}") for d in range(1, 6)]
    mixed = [
        # 2026-06-07T23:30:00+08:00 is 15:30Z: expired, though its local date is the 7th
        _nginx("203.0.113.7", "07/Jun/2026:23:30:00 +0800",
               "GET /api/v1/items/3?email=zhang.wei%40example.com"),
        _nginx("203.0.113.8", "07/Jun/2026:08:59:59 -0700", "GET /api/v1/search"),  # 15:59:59Z
        _nginx("203.0.113.9", "08/Jun/2026:00:00:00 +0800", "GET /api/v1/profile"),  # = cutoff
        "-- MARK --",  # no time: kept, counted
        # the line's own time comes first; a time in its query string does not count
        _nginx("203.0.113.7", "08/Jun/2026:00:30:00 +0800",
               "GET /api/v1/orders?since=2020-01-01T00:00:00Z"),
        _nginx("203.0.113.7", "07/Jun/2026:10:00:00 -0700", "POST /api/v1/uploads/9"),  # 17:00Z
        "2026-06-07T23:59:00+08:00 upstream timed out",  # ISO in a text line: 15:59Z
    ]
    current = [_nginx("198.51.100.4", "05/Dec/2026:09:00:00 +0800", "GET /api/v1/feed")]
    nginx = tmp_path / "logs/nginx"
    write(nginx / "access.log.2.gz", ("\n".join(old) + "\n").encode(), gz=True)
    write(nginx / "access.log.1", ("\r\n".join(mixed) + "\r\n").encode())  # CRLF survives
    write(nginx / "access.log", ("\n".join(current) + "\n").encode())
    untouched = snapshot(tmp_path)["logs/nginx/access.log"]
    c, rules = logs(tmp_path)

    predicted = expired(c, rules["access-180d"], cutoff, None)
    swept = sweep(c, rules["access-180d"], cutoff, None)

    assert predicted == LogsExpired(lines=8, files=1, held=0, undated=1,
                                    oldest=datetime(2026, 5, 1, 2, 0, tzinfo=UTC))
    assert (swept.lines, swept.files, swept.held, swept.undated) == (8, 1, 0, 1)
    assert not (nginx / "access.log.2.gz").exists()
    assert (nginx / "access.log.1").read_bytes() == (
        "\r\n".join([mixed[2], mixed[3], mixed[4], mixed[5]]) + "\r\n").encode()
    assert snapshot(tmp_path)["logs/nginx/access.log"] == untouched
    before = snapshot(tmp_path)
    again = sweep(c, rules["access-180d"], cutoff, None)
    assert isinstance(again, LogsSwept)
    assert (again.lines, again.files, again.held, again.undated) == (0, 0, 0, 1)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("line", "expected"), [
    (b"2026-06-07T23:30:00+08:00 x", datetime(2026, 6, 7, 15, 30, tzinfo=UTC)),
    (b"ts=2026-06-07T15:30:00Z x", datetime(2026, 6, 7, 15, 30, tzinfo=UTC)),
    (b"2026-06-07 15:30:00,250 INFO x", datetime(2026, 6, 7, 15, 30, 0, 250000, tzinfo=UTC)),
    (b"2026-06-07 10:30:00 -0500 x", datetime(2026, 6, 7, 15, 30, tzinfo=UTC)),
    (b"2026-06-07 15:30:00 +12 retries", datetime(2026, 6, 7, 15, 30, tzinfo=UTC)),
    (b"2026-06-07T15:30:00.123456789Z", datetime(2026, 6, 7, 15, 30, 0, 123456, tzinfo=UTC)),
    (b"1.2.3.4 - - [07/Jun/2026:23:30:00 +0800] \"GET / HTTP/1.1\"",
     datetime(2026, 6, 7, 15, 30, tzinfo=UTC)),
    (b"2026-13-40T10:00:00Z then 2026-06-07T15:30:00Z", datetime(2026, 6, 7, 15, 30,
                                                                  tzinfo=UTC)),
    (b"report for 2020-01-01, no time", None),
    (b"build 12026-06-07T15:30:00Z", None),
    (b"", None),
])
def test_text_times(line: bytes, expected: datetime | None) -> None:
    assert text_time(line) == expected


def test_file_modified_deletes_old_files_whole_and_keeps_new_ones(tmp_path: Path) -> None:
    audit = {"path": "logs/audit/*.log", "format": "text", "identities": ["email"]}
    rule = {"name": "audit-180d", "source": "audit", "after_days": 180,
            "counts_from": "file_modified"}
    old, edge, new = (tmp_path / f"logs/audit/{n}.log" for n in ("old", "edge", "new"))
    write(old, b"login zhang.wei@example.com\nlogout\n\nlogin again\n")
    write(edge, b"2020-01-01T00:00:00Z written exactly at the cutoff\n")
    write(new, b"2020-01-01T00:00:00Z the lines' times do not count here\n")
    old_time = CUTOFF - timedelta(days=1, seconds=5)
    for path, when in ((old, old_time), (edge, CUTOFF), (new, CUTOFF + timedelta(hours=1))):
        ns = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
        os.utime(path, ns=(ns, ns))
    keep = snapshot(tmp_path)
    c, rules = logs(tmp_path, {"audit": audit}, [rule])

    assert expired(c, rules["audit-180d"], CUTOFF, None) == LogsExpired(
        lines=3, files=1, held=0, undated=0, oldest=old_time)
    swept = sweep(c, rules["audit-180d"], CUTOFF, None)

    assert (swept.lines, swept.files, swept.held, swept.undated) == (3, 1, 0, 0)
    assert not old.exists()
    after = snapshot(tmp_path)
    assert after == {k: v for k, v in keep.items() if k != "logs/audit/old.log"}
    assert sweep(c, rules["audit-180d"], CUTOFF, None).files == 0
    assert snapshot(tmp_path) == after


def test_file_modified_with_a_hold_keeps_the_held_lines_and_the_clock(tmp_path: Path) -> None:
    rule = {"name": "app-180d", "source": "app", "after_days": 180,
            "counts_from": "file_modified"}
    lines = [{"ts": "2026-01-01T00:00:00Z", "user": {"id": "u1"}, "event": "login"},
             {"ts": "2026-01-01T00:00:01Z", "user": {"id": "u2"}, "event": "login"},
             {"ts": "2026-01-01T00:00:02Z", "event": "cron"},
             {"ts": "2026-01-01T00:00:03Z", "user": {"email": "User2@Example.com"}}]
    path = tmp_path / "logs/app/app-2026-01-01.jsonl"
    write(path, "".join(json.dumps(x) + "\n" for x in lines).encode())
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_767_225_600 * 10**9, 1_767_225_600 * 10**9))  # 2026-01-01
    c, rules = logs(tmp_path, {"app": APP}, [rule])
    hold = holding(user_ids={"u2"}, emails={"user2@example.com"})

    assert expired(c, rules["app-180d"], CUTOFF, hold) == LogsExpired(
        lines=4, files=0, held=2, undated=0,
        oldest=datetime(2026, 1, 1, tzinfo=UTC))
    swept = sweep(c, rules["app-180d"], CUTOFF, hold)

    assert (swept.lines, swept.files, swept.held) == (2, 0, 2)
    assert path.read_text() == json.dumps(lines[1]) + "\n" + json.dumps(lines[3]) + "\n"
    st_ = path.stat()
    assert st_.st_mtime_ns == 1_767_225_600 * 10**9 and st_.st_mode & 0o777 == 0o640
    before = snapshot(tmp_path)
    assert sweep(c, rules["app-180d"], CUTOFF, hold).lines == 0
    assert snapshot(tmp_path) == before
    # The hold released, the file's period has long run out: it goes.
    assert sweep(c, rules["app-180d"], CUTOFF, None).files == 1
    assert not path.exists()


# -- 3. a hold over text logs ---------------------------------------------------------------
def test_a_hold_over_a_text_source_raises_before_anything_changes(tmp_path: Path) -> None:
    nginx = tmp_path / "logs/nginx"
    write(nginx / "access.log.1", (_nginx("203.0.113.7", "01/May/2026:10:00:00 +0800",
                                          "GET /?email=zhang.wei%40example.com") + "\n").encode())
    write(nginx / "access.log.2.gz", b"2026-01-01T00:00:00Z zhang.wei@example.com\n", gz=True)
    before = snapshot(tmp_path)
    c, rules = logs(tmp_path)
    hold = holding(emails={"zhang.wei@example.com"})
    for rule in (rules["access-180d"],
                 LogRetentionRule(name="access-files", source="access", after_days=180,
                                  counts_from="file_modified")):
        for run in (expired, sweep):
            with pytest.raises(HoldUnreadable) as caught:
                run(c, rule, CUTOFF, hold)
            assert isinstance(caught.value, LogsError)
            message = str(caught.value)
            assert "applogs" in message and "access" in message and "zhang" not in message
    assert snapshot(tmp_path) == before
    assert not (tmp_path / ".state").exists()


# -- 4. hard links ---------------------------------------------------------------------------
def test_a_hard_linked_file_keeps_its_inode_and_every_name_sees_the_sweep(
    tmp_path: Path,
) -> None:
    nginx = tmp_path / "logs/nginx"
    backup = tmp_path / "backup"
    backup.mkdir()
    lines = [_nginx("203.0.113.7", "01/Jun/2026:10:00:00 +0800", "GET /old"),
             _nginx("203.0.113.7", "09/Jun/2026:10:00:00 +0800", "GET /new")]
    write(nginx / "access.log.1", ("\n".join(lines) + "\n").encode())
    os.link(nginx / "access.log.1", backup / "access-june.log")  # outside every source
    write(nginx / "access.log.2", (lines[0] + "\n").encode())
    os.link(nginx / "access.log.2", backup / "access-may.log")
    # two names inside the source: read, counted and deleted once, under both names
    write(nginx / "access.log.3", (lines[0] + "\n" + lines[0] + "\n").encode())
    os.link(nginx / "access.log.3", nginx / "access.log.3.old")
    inode = (nginx / "access.log.1").stat().st_ino
    c, rules = logs(tmp_path)

    swept = sweep(c, rules["access-180d"], CUTOFF, None)

    assert (swept.lines, swept.files) == (4, 2)
    assert (nginx / "access.log.1").stat().st_ino == inode
    assert (nginx / "access.log.1").stat().st_nlink == 2
    assert (backup / "access-june.log").read_bytes() == (lines[1] + "\n").encode()
    assert (nginx / "access.log.1").read_bytes() == (lines[1] + "\n").encode()
    # deleted whole: the other name holds nothing of it either
    assert not (nginx / "access.log.2").exists()
    assert (backup / "access-may.log").read_bytes() == b""
    assert not (nginx / "access.log.3").exists() and not (nginx / "access.log.3.old").exists()
    assert not list((tmp_path / ".state" / "in-place").iterdir())
    assert sweep(c, rules["access-180d"], CUTOFF, None).lines == 0


# -- 5. S3, versioned ------------------------------------------------------------------------
@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"wishe-logs-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    yield client, bucket


def _jsonl(*lines: tuple[str, str, str]) -> bytes:
    return "".join(json.dumps({"ts": ts, "user": {"id": uid}, "event": event}) + "\n"
                   for ts, uid, event in lines).encode()


def _versions(client: Any, bucket: str) -> dict[str, list[bytes]]:
    listed = client.list_object_versions(Bucket=bucket)
    assert not listed.get("DeleteMarkers")
    out: dict[str, list[bytes]] = {}
    for v in listed.get("Versions", []):
        body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
        out.setdefault(v["Key"], []).append(content_of(body["Body"].read()))
    return out


def content_of(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


S3_SOURCE = {"format": "jsonl", "fields": {"user.id": "user_id"}}
S3_RULE = {"name": "app-180d", "source": "app", "after_days": 180,
           "counts_from": "line_timestamp", "timestamp_field": "ts"}


def test_s3_objects_lose_their_expired_lines_and_every_old_version(
    tmp_path: Path, s3: tuple[Any, str],
) -> None:
    client, bucket = s3
    mixed = [("2026-06-07T23:30:00+08:00", "u1", "expired"),  # 15:30Z
             ("2026-06-01T00:00:00Z", "u2", "expired, held"),
             ("2026-06-08T09:00:00+08:00", "u1", "kept"),  # 01:00Z
             ("2026-06-09T00:00:00Z", "u3", "kept")]
    client.put_object(Bucket=bucket, Key="app/2026-06-07.jsonl",
                      Body=_jsonl(("2026-06-01T00:00:00Z", "u1", "expired, older version")))
    client.put_object(Bucket=bucket, Key="app/2026-06-07.jsonl", Body=_jsonl(*mixed),
                      ContentType="application/x-ndjson", Metadata={"host": "web-1"})
    client.put_object(Bucket=bucket, Key="app/2026-05-01.jsonl.gz",
                      Body=gzip.compress(b"older\n"))
    client.put_object(Bucket=bucket, Key="app/2026-05-01.jsonl.gz",
                      Body=gzip.compress(_jsonl(("2026-05-01T10:00:00Z", "u1", "expired"),
                                                ("2026-05-01T10:00:01Z", "u3", "expired"))))
    recent = _jsonl(("2026-06-09T10:00:00Z", "u1", "kept"))
    client.put_object(Bucket=bucket, Key="app/2026-06-09.jsonl", Body=recent)
    client.put_object(Bucket=bucket, Key="other/2026-01-01.jsonl",
                      Body=_jsonl(("2026-01-01T00:00:00Z", "u1", "not this source")))
    untouched = client.head_object(Bucket=bucket, Key="app/2026-06-09.jsonl")["VersionId"]
    source = {**S3_SOURCE, "s3": {"bucket": bucket, "prefix": "app/"}}
    c, rules = logs(tmp_path, {"app": source}, [S3_RULE], client=client)
    hold = holding(user_ids={"u2"})

    predicted = expired(c, rules["app-180d"], CUTOFF, hold)
    swept = sweep(c, rules["app-180d"], CUTOFF, hold)

    assert predicted == LogsExpired(lines=4, files=1, held=1, undated=0,
                                    oldest=datetime(2026, 5, 1, 10, tzinfo=UTC))
    assert (swept.lines, swept.files, swept.held, swept.undated) == (3, 1, 1, 0)
    versions = _versions(client, bucket)
    assert versions == {
        "app/2026-06-07.jsonl": [_jsonl(mixed[1], mixed[2], mixed[3])],
        "app/2026-06-09.jsonl": [recent],
        "other/2026-01-01.jsonl": [_jsonl(("2026-01-01T00:00:00Z", "u1",
                                           "not this source"))],
    }
    head = client.head_object(Bucket=bucket, Key="app/2026-06-07.jsonl")
    assert head["ContentType"] == "application/x-ndjson" and head["Metadata"] == {
        "host": "web-1"}
    assert client.head_object(Bucket=bucket, Key="app/2026-06-09.jsonl")["VersionId"] == \
        untouched
    assert not list((tmp_path / ".state" / "tmp").iterdir())
    again = sweep(c, rules["app-180d"], CUTOFF, hold)
    assert (again.lines, again.files, again.held) == (0, 0, 1)
    assert _versions(client, bucket) == versions


def test_s3_a_sweep_killed_after_the_put_deletes_the_old_versions_on_its_rerun(
    tmp_path: Path, s3: tuple[Any, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, bucket = s3
    lines = [("2026-06-01T00:00:00Z", "u1", "expired"), ("2026-06-09T00:00:00Z", "u1", "kept")]
    client.put_object(Bucket=bucket, Key="app/a.jsonl", Body=_jsonl(*lines))
    source = {**S3_SOURCE, "s3": {"bucket": bucket, "prefix": "app/"}}
    c, rules = logs(tmp_path, {"app": source}, [S3_RULE], client=client)
    real = LogsConnector._purge_versions

    def killed(self: LogsConnector, file: Any, keep: str | None) -> None:
        raise KeyboardInterrupt  # what SIGKILL would leave: the new version, the old one

    monkeypatch.setattr(LogsConnector, "_purge_versions", killed)
    with pytest.raises(KeyboardInterrupt):
        sweep(c, rules["app-180d"], CUTOFF, None)
    assert sorted(_versions(client, bucket)["app/a.jsonl"]) == sorted(
        [_jsonl(*lines), _jsonl(lines[1])])

    monkeypatch.setattr(LogsConnector, "_purge_versions", real)
    rerun = sweep(c, rules["app-180d"], CUTOFF, None)

    assert rerun.lines == 0  # the first run cut it; the rerun reports only its own changes
    assert _versions(client, bucket) == {"app/a.jsonl": [_jsonl(lines[1])]}
    assert not list((tmp_path / ".state").glob("erase-*.jsonl"))


# -- crashes, active logs, errors -------------------------------------------------------------
def test_a_failed_replace_leaves_the_old_file_and_the_rerun_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "logs/nginx/access.log.1"
    lines = [_nginx("203.0.113.7", "01/Jun/2026:10:00:00 +0800", "GET /old"),
             _nginx("203.0.113.7", "09/Jun/2026:10:00:00 +0800", "GET /new")]
    write(path, ("\n".join(lines) + "\n").encode())
    before = snapshot(tmp_path)
    c, rules = logs(tmp_path)

    def refused(tmp: str, target: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(logs_connector, "_replace_file", refused)
    with pytest.raises(LogsError) as caught:
        sweep(c, rules["access-180d"], CUTOFF, None)
    assert str(caught.value) == ("systems.applogs.sources.access: logs/nginx/access.log.1: "
                                 "replace failed (PermissionError: Permission denied)")
    assert snapshot(tmp_path) == before  # and no temporary file beside it
    # A killed run leaves its temporary file: the rerun removes it.
    stale = path.parent / f".access.log.1.x{logs_rewrite.TMP_SUFFIX}"
    stale.write_bytes(lines[0].encode())
    monkeypatch.setattr(logs_connector, "_replace_file", os.replace)

    rerun = sweep(c, rules["access-180d"], CUTOFF, None)

    assert rerun.lines == 1 and not stale.exists()
    assert path.read_bytes() == (lines[1] + "\n").encode()
    assert path.stat().st_mtime_ns == before["logs/nginx/access.log.1"][2]


def test_lines_appended_while_an_active_log_is_swept_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "logs/nginx/access.log"
    old = _nginx("203.0.113.7", "01/Jun/2026:10:00:00 +0800", "GET /old")
    new = [_nginx("203.0.113.7", f"09/Jun/2026:10:00:0{i} +0800", f"GET /{i}")
           for i in range(4)]
    write(path, f"{old}\n{new[0]}\n".encode())
    real = logs_retention._blocks
    appended: list[bool] = []

    def read_then_append(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from real(*args, **kwargs)
        if len(appended) < 2:  # twice while it is read: read on, both times
            appended.append(True)
            with open(path, "a") as f:
                f.write(new[len(appended)] + "\n")

    monkeypatch.setattr(logs_retention, "_blocks", read_then_append)
    c, rules = logs(tmp_path)
    stat = c._stat
    stats: list[Any] = []

    def stat_after_a_write(file: Any) -> os.stat_result:
        stats.append(file)
        if len(stats) == 2:  # between the read and the replace: read it all again
            with open(path, "a") as f:
                f.write(new[3] + "\n")
        return stat(file)

    monkeypatch.setattr(c, "_stat", stat_after_a_write)
    swept = sweep(c, rules["access-180d"], CUTOFF, None)
    assert swept.lines == 1 and len(stats) == 4
    assert path.read_text() == "".join(x + "\n" for x in new)


def test_a_file_that_cannot_be_read_fails_by_name_never_by_content(tmp_path: Path) -> None:
    write(tmp_path / "logs/nginx/access.log.1.gz",
          gzip.compress(b"2026-01-01T00:00:00Z zhang.wei@example.com\n" * 50)[:-30])
    c, rules = logs(tmp_path)
    for run in (expired, sweep):
        with pytest.raises(LogsError) as caught:
            run(c, rules["access-180d"], CUTOFF, None)
        message = str(caught.value)
        assert message.startswith("systems.applogs.sources.access: "
                                  "logs/nginx/access.log.1.gz: read failed")
        assert "zhang" not in message


def test_a_jsonl_hold_sees_identities_inside_a_declared_field(tmp_path: Path) -> None:
    msg = {"path": "logs/app/*.jsonl*", "format": "jsonl", "fields": {"msg": "email"}}
    lines = [{"ts": "2026-06-01T00:00:00Z", "msg": "reset sent to Zhang.Wei%40Example.com"},
             {"ts": "2026-06-01T00:00:00Z", "msg": "reset sent to wang.fang@example.org"}]
    path = tmp_path / "logs/app/a.jsonl"
    write(path, "".join(json.dumps(x) + "\n" for x in lines).encode())
    rule = {**S3_RULE, "source": "app"}
    c, rules = logs(tmp_path, {"app": msg}, [rule])
    swept = sweep(c, rules["app-180d"], CUTOFF, holding(emails={"zhang.wei@example.com"}))
    assert (swept.lines, swept.held) == (1, 1)
    assert path.read_text() == json.dumps(lines[0]) + "\n"


def test_only_the_rules_source_is_swept(tmp_path: Path) -> None:
    """Only the rule's source is read: a file of another source with expired lines stays."""
    rng = random.Random(7)
    app_lines = [json.dumps({"meta": {"ts": f"2026-0{rng.choice([5, 7])}-01T00:00:00Z"}})
                 for _ in range(20)]
    write(tmp_path / "logs/app/a.jsonl", ("\n".join(app_lines) + "\n").encode())
    write(tmp_path / "logs/nginx/access.log.1", b"2026-01-01T00:00:00Z old\n")
    c, rules = logs(tmp_path)
    before = snapshot(tmp_path)["logs/nginx/access.log.1"]
    swept = sweep(c, rules["app-180d"], CUTOFF, None)
    assert swept.lines == sum("2026-05" in x for x in app_lines)
    assert snapshot(tmp_path)["logs/nginx/access.log.1"] == before


def test_a_time_field_given_twice_counts_its_youngest_value(tmp_path: Path) -> None:
    """A repeated key or an array at the field: the line stays while any value says so."""
    lines = ['{"meta": {"ts": "2026-06-01T00:00:00Z"}, "meta": {"ts": "2026-06-09T00:00:00Z"}}',
             '{"meta": {"ts": ["2026-06-01T00:00:00Z", 1780963200]}}',  # 2026-06-09
             '{"meta": [{"ts": "2026-06-01T00:00:00Z"}, {"ts": "2026-06-02T00:00:00Z"}]}']
    path = tmp_path / "logs/app/a.jsonl"
    write(path, "".join(x + "\n" for x in lines).encode())
    c, rules = logs(tmp_path)
    swept = sweep(c, rules["app-180d"], CUTOFF, None)
    assert (swept.lines, swept.undated) == (1, 0)
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
