"""A batch mixing hostile and normal tickets, from intake through the request flow on the
real Prefect server, over a user database, application logs and an S3 bucket (moto):
every normal request completes and its subject's data is gone everywhere; every hostile
ticket is either refused at intake with a reason that names a field and repeats no value,
or accepted and then finds nothing that is not its own (SQL metacharacters, regex
characters and traversal values match literally, look-alikes match nobody); and nothing
of anyone outside the normal requests changes: not a row, not a log line, not an object.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa

from dsrflow.intake import submit
from dsrflow.model import Status
from flows.request import BatchIncomplete, process_requests
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket

USERS = 12
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}

# Accepted at intake (they are well-formed), and must match nothing but themselves.
ACCEPTED_HOSTILE = [
    ("email", "%_@example.com"),
    ("email", "o'brien@example.com"),
    ("email", "user2@example.co"),  # one letter short of user 2's address
    ("email", "ser4@example.com"),  # user 4's address without its first letter
    ("device_id", "%"),
    ("device_id", ".*"),
    ("device_id", "' OR '1'='1"),
    ("device_id", "dev-1%"),
    ("device_id", "dev-"),
    ("device_id", "../../etc"),  # reaches no key template or path in this map
    ("user_id", "-1"),
    ("user_id", "0"),
    ("phone", "+8613800130099"),  # a number nobody has
]
# Refused at intake, each for the field it breaks.
REFUSED = [
    ("email", ".*@example.com"),
    ("email", "a@b..com"),
    ("user_id", "²"),
    ("user_id", "5 OR 1=1"),
    ("user_id", "1" * 40),
    ("phone", "13800130002%"),  # phonenumbers alone would read user 2's number
    ("phone", "1380013OOO2"),  # ... and letters as keypad digits
    ("phone", "138001300"),
    ("device_id", "dev-1\n2026-11-20 INFO forged line"),
    ("device_id", "a\x00b"),
]


@pytest.fixture
def world(tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
          prefect_server: list[Path]) -> Iterator[tuple[Runtime, sqlworld.World, str]]:
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    w, url = sqlworld.sqlite_world(tmp_path, 23, USERS)
    bucket = f"uploads-{random.Random().getrandbits(40):x}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    for uid in range(1, USERS + 1):  # uploads/1/ beside uploads/10/, 11/, 12/
        s3.put_object(Bucket=bucket, Key=f"uploads/{uid}/avatar.jpg", Body=f"{uid}".encode())
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "app.log").write_text("".join(_log_lines(w)))
    doc: dict[str, Any] = sqlworld.datamap_doc(url)
    doc["systems"]["applogs"] = {"kind": "logs", "phone_region": "CN", "sources": {"app": {
        "path": "logs/*.log", "format": "text",
        "identities": ["email", "phone", "device_id"]}}}
    doc["systems"]["media"] = {"kind": "objects", "endpoint_url": s3_endpoint,
                               "buckets": {bucket: {
                                   "category": "media", "action": "delete",
                                   "ownership": [{"key_template": "uploads/{user_id}/"}]}}}
    rt = make_runtime(tmp_path, doc, task_retries=0)
    previous = set_runtime(rt)
    yield rt, w, bucket
    set_runtime(previous)
    rt.close()


def _log_lines(w: sqlworld.World) -> list[str]:
    """Lines as an API server writes them, and lines that only look like a subject's:
    an address inside a longer address or domain, a number inside a longer number."""
    lines = []
    for n, user in enumerate(w.rows["users"]):
        uid, email, phone = user["id"], user["email"], user["phone"]
        lines.append(f"2026-11-20T09:{n:02d}:01.120Z INFO  [api] login ok user={email} "
                     f"from 203.0.113.{n + 1} ua=\"Mozilla/5.0\"\n")
        lines.append(f"2026-11-20T09:{n:02d}:02.004Z INFO  [sms] code sent to {phone} "
                     f"(uid {uid})\n")
        lines.append(f"2026-11-20T09:{n:02d}:03.877Z WARN  [mail] bounce for "
                     f"x{email.lower()} and {email.lower()}.cn, retry in 60s\n")
        lines.append(f"2026-11-20T09:{n:02d}:04.310Z DEBUG [sms] queued 9{phone[-11:]}1\n")
    for device in w.rows.get("devices", []):
        lines.append(f"2026-11-20T10:00:00.000Z INFO  [push] token refreshed "
                     f"device={device['device_id']}\n")
        lines.append(f"2026-11-20T10:00:01.000Z INFO  [push] token refreshed "
                     f"device={device['device_id']}0\n")
    lines.append("2026-11-20T11:00:00.000Z ERROR [db] query failed: LIKE '%' ESCAPE '\\' .*\n")
    return lines


def _rows(url: str) -> dict[str, list[dict[str, Any]]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        tables = {name: [dict(r._mapping) for r in conn.execute(sa.select(table))]
                  for name, table in sqlworld.metadata.tables.items()}
    engine.dispose()
    return tables


def _objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _owned_by(w: sqlworld.World, table: str, row: dict[str, Any], uids: set[int]) -> bool:
    key_columns = {"post_tags": ("post_id", "tag"), "follows": ("follower_id", "followee_id")}
    key = tuple(row[c] for c in key_columns.get(table, ("id",)))
    return bool(w.owners.get(table, {}).get(key, set()) & uids)


def test_hostile_tickets_in_a_batch_harm_nobody(
    world: tuple[Runtime, sqlworld.World, str], s3_endpoint: str, tmp_path: Path
) -> None:
    rt, w, bucket = world
    url = rt.datamap.sql("db").url or ""
    devices: dict[int, list[str]] = {}
    for d in w.rows.get("devices", []):
        devices.setdefault(d["user_id"], []).append(str(d["device_id"]))
    accounts = {2, 3, 5}
    device_owner = min(uid for uid in devices if uid not in accounts)
    device = devices[device_owner][0]
    normal = {
        "N-2": ("email", str(w.user(2)["email"]).upper()),
        "N-3": ("phone", sqlworld.phone_for(3)),  # national, read in the regime's region
        "N-5": ("user_id", "5"),
        # A device vouches for no account (a family tablet): its lines are erased, but its
        # row names an account the ticket did not prove, so the row stays, said so.
        "N-device": ("device_id", device),
    }
    before_rows, before_log = _rows(url), (tmp_path / "logs" / "app.log").read_text()
    before_objects = _objects(s3_endpoint, bucket)

    tickets = [(tid, t, v) for tid, (t, v) in normal.items()]
    tickets += [(f"H-{i}", t, v) for i, (t, v) in enumerate(ACCEPTED_HOSTILE)]
    tickets += [(f"R-{i}", t, v) for i, (t, v) in enumerate(REFUSED)]
    random.Random(7).shuffle(tickets)
    submitted = {
        tid: submit(rt.ledger, rt.datamap,
                    ticket(tid, "erasure", [{"type": t, "value": v}]))
        for tid, t, v in tickets
    }

    # Refused at intake: recorded, with a reason that names the field and quotes nothing.
    for i, (_, value) in enumerate(REFUSED):
        outcome = submitted[f"R-{i}"]
        assert outcome.status is Status.REJECTED, (value, outcome)
        assert outcome.reason and outcome.reason.startswith("identities.0")
        assert value not in outcome.reason and rt.ledger.get(outcome.request_id)
    accepted = [s.request_id for s in submitted.values() if s.status is not Status.REJECTED]
    assert len(accepted) == len(normal) + len(ACCEPTED_HOSTILE)

    with contextlib.suppress(BatchIncomplete):  # judged below, request by request
        process_requests(accepted)

    for tid in normal:
        record = rt.ledger.get(submitted[tid].request_id)
        assert record.status is Status.COMPLETED, (tid, record.reason)
    for i, (_, value) in enumerate(ACCEPTED_HOSTILE):
        rid = submitted[f"H-{i}"].request_id
        record = rt.ledger.get(rid)
        work = [s for s in rt.ledger.steps([rid]) if s.action == "erase"]
        if record.status is Status.COMPLETED:
            # Nothing of anyone was taken for it.
            assert all(not s.deleted and not s.anonymized for s in work), (value, work)
        else:  # it may fail, but only alone and with a reason that quotes nothing
            assert record.status is Status.FAILED and record.reason, (value, record)
            assert value not in str(record.reason)

    # The normal subjects are gone from every system...
    after_rows = _rows(url)
    assert not [u for u in after_rows["users"]
                if u["id"] in accounts and (u["nickname"] or "@" in str(u["email"]))]
    assert not [d for d in after_rows["devices"] if d["user_id"] in accounts]
    db = next(s for s in rt.ledger.steps([submitted["N-device"].request_id])
              if s.system == "db" and s.action == "erase")
    assert db.retained and not db.deleted, db
    after_log = (tmp_path / "logs" / "app.log").read_text()
    gone = {device} | {t for uid in accounts for t in _identities(w, uid, devices)}
    assert not [line for line in after_log.splitlines() if _tokens(line) & gone]
    after_objects = _objects(s3_endpoint, bucket)
    assert not [k for k in after_objects if int(k.split("/")[1]) in accounts]

    # ... and nothing of anybody else changed: rows, log lines, objects.
    for table, rows in before_rows.items():
        theirs = [r for r in rows if not _owned_by(w, table, r, accounts)]
        left = after_rows[table]
        assert all(r in left for r in theirs), table
    after_lines = set(after_log.splitlines())
    assert all(line in after_lines
               for line in before_log.splitlines() if not _tokens(line) & gone)
    assert {k: v for k, v in before_objects.items()
            if int(k.split("/")[1]) not in accounts} == after_objects


def _identities(w: sqlworld.World, uid: int, devices: dict[int, list[str]]) -> set[str]:
    user = w.user(uid)
    return {str(user["email"]), str(user["email"]).lower(), str(user["phone"]),
            *devices.get(uid, [])}


def _tokens(line: str) -> set[str]:
    """A line's whole tokens: the look-alike lines hold identities only inside longer
    tokens, and those lines must stay as they are."""
    return set(line.replace("=", " ").replace(",", " ").split())
