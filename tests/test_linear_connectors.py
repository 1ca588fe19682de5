"""Linear connectors (issue 16): no connector scans the batch once per request.

Work is counted, not timed, for a batch of 20 subjects and one of 200, each in a world
where every subject has the same kinds and numbers of records:

- what goes out of the process: SQL statements (SQLAlchemy's `before_cursor_execute`),
  S3 API calls (botocore's `before-call`), opens of each log file. A batch costs a fixed
  number of them, plus one per chunk of a list too long for one statement (the chunk size
  is the connector's own), plus what S3 can only be asked one key prefix at a time;
- Python's own work: line events of the connector's code, per function and
  comprehension (`sys.settrace`). Each may grow as the batch does (10x), never as its
  square: a loop over the whole batch for each request is a function whose count grows
  a hundredfold.
"""

from __future__ import annotations

import builtins
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from moto import mock_aws

import connectors.logs.connector
import connectors.logs.matching
import connectors.logs.prefilter
import connectors.logs.rewrite
import connectors.objects
import connectors.s3
import connectors.sql
import connectors.sql_holds
import connectors.sql_ownership
from connectors.logs import LogsConnector
from connectors.objects import ObjectsConnector
from connectors.s3 import DELETE_BATCH
from connectors.sql import SqlConnector
from connectors.sql_ownership import Locator
from dsrflow.crypto import Pseudonymizer, new_key
from dsrflow.datamap import LogsSystem, ObjectsSystem, parse_datamap
from dsrflow.identities import Identity, IdentityType, Subject
from examples.wishe import schema
from tests.helpers import wishe_datamap
from tests.logfiles import write

SMALL, LARGE = 20, 200
GROWTH = LARGE / SMALL
# Subjects are every other user, the small batch's below the large one's: each subject's
# neighbours (the user after them, whom they follow and whose upload they comment on) are
# not in the batch, whichever batch it is.
USERS = 2 * (SMALL + LARGE) + 10


def batches() -> tuple[list[int], list[int]]:
    small = [2 * i + 1 for i in range(SMALL)]
    large = [2 * (SMALL + i) + 1 for i in range(LARGE)]
    return small, large


# -- Python's work, per function ---------------------------------------------------------------
Lines = Counter[str]


@contextmanager
def python_lines(*modules: ModuleType) -> Iterator[Lines]:
    """Line events in the code of `modules`, per code object (a function, a comprehension,
    a generator expression: each is its own)."""
    files = {m.__file__ for m in modules}
    lines: Lines = Counter()

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            code = frame.f_code
            lines[f"{Path(code.co_filename).name}:{code.co_firstlineno} {code.co_name}"] += 1
        return local

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename in files else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        yield lines
    finally:
        sys.settrace(previous)


def assert_linear(small: Lines, large: Lines) -> None:
    """No function's work grows faster than the batch: at most twice GROWTH, give or take a
    thousand lines. The margin is for what data and threads decide (a few more branches
    taken, a writer thread's finished copies collected now or later: up to 12x here),
    far below the hundredfold of a scan of the batch per request."""
    assert sum(large.values()) > 0
    grown = {f: (small[f], n) for f, n in large.items() if n > small[f] * GROWTH * 2 + 1000}
    assert not grown, f"lines at {SMALL} and {LARGE} subjects: {grown}"


# -- SQL ---------------------------------------------------------------------------------------
def make_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    if url.startswith("sqlite"):
        sa.event.listen(engine, "connect", lambda c, _: c.execute("PRAGMA foreign_keys=ON"))
    return engine


def wishe_rows(users: int) -> dict[str, list[dict[str, Any]]]:
    """The Wishe schema with the same records for every user: a login, two devices, three
    places, two contacts, a face, two uploads, a comment on their own upload and one on
    the next user's, three pages seen, an order, and they follow the next two users."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in schema.metadata.tables}

    def n_of(u: int, k: int, per: int) -> int:
        return (u - 1) * per + k

    for u in range(1, users + 1):
        after = u % users + 1
        rows["users"].append({
            "id": u, "phone": f"138{u:08d}", "email": f"user{u}@example.com",
            "password_hash": "x", "birthday": date(1990, 1, 1 + u % 28), "gender": "female",
            "unit_name": "Wishe", "created_at": at, "cancelled_at": None, "restricted_at": None,
        })
        rows["third_party_logins"].append({
            "id": u, "user_id": u, "provider": "wechat", "openid": f"o{u:027d}",
            "nickname": "n", "avatar_url": None, "region": None, "gender": None, "email": None,
        })
        for k in (1, 2):
            rows["trusted_devices"].append({
                "id": n_of(u, k, 2), "user_id": u, "device_id": f"{u:012d}{k:04d}",
                "name": "phone", "type": "phone", "last_used_at": at,
            })
            rows["contacts"].append({"id": n_of(u, k, 2), "user_id": u,
                                     "contact_name": "c", "contact_phone": "13900000000"})
            rows["uploads"].append({"id": n_of(u, k, 2), "user_id": u,
                                    "s3_key": f"uploads/{u}/{k}.jpg", "media_type": "image/jpeg",
                                    "created_at": at})
        for k, upload in ((1, n_of(u, 1, 2)), (2, n_of(after, 2, 2))):
            rows["comments"].append({"id": n_of(u, k, 2), "user_id": u, "upload_id": upload,
                                     "body": "好看！", "created_at": at})
        for k in (1, 2, 3):
            rows["location_history"].append({"id": n_of(u, k, 3), "user_id": u,
                                             "latitude": 39.9, "longitude": 116.4,
                                             "recorded_at": at})
            rows["browsing_history"].append({"id": n_of(u, k, 3), "user_id": u,
                                             "url": f"https://wishe.example.com/item/{k}",
                                             "viewed_at": at, "ip_address": "36.1.2.3"})
        rows["face_templates"].append({"id": u, "user_id": u, "template": b"\x00" * 16,
                                       "object_key": f"faces/{u}/f.jpg", "created_at": at})
        rows["orders"].append({"id": u, "user_id": u, "amount": 10, "buyer_name": "b",
                               "buyer_phone": f"138{u:08d}", "shipping_address": "a",
                               "created_at": at})
        for other in (after, after % users + 1):
            rows["follows"].append({"follower_id": u, "followee_id": other, "created_at": at})
    return rows


def by_email(users: Sequence[int]) -> list[Subject]:
    return [Subject(request_id=f"r{u}", phone_region="CN",
                    identities=(Identity.read(IdentityType.EMAIL, f"user{u}@example.com"),))
            for u in users]


def erase_as_the_pipeline_does(connector: SqlConnector, subjects: list[Subject]) -> None:
    """Resolve (the identities their rows hold join the request's), erase, verify."""
    found = connector.discover(subjects)
    subjects = [s.model_copy(update={"identities": (*s.identities, *sorted(
        found[s.request_id].found - set(s.identities), key=lambda i: (i.type, i.value)))})
        for s in subjects]
    keys = {s.request_id: Pseudonymizer(new_key()) for s in subjects}
    erased = connector.erase(subjects, None, keys, held={})
    assert all(o.total("deleted") > 0 for o in erased.values())
    verified = connector.verify(subjects, None, held={})
    assert sum(o.total("remaining") for o in verified.values()) == 0


def test_sql_connector_statements_and_python_work_grow_linearly(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(db_url)
    schema.metadata.create_all(engine)
    with engine.begin() as conn:
        for table in schema.metadata.sorted_tables:
            conn.execute(table.insert(), wishe_rows(USERS)[table.name])
    connector = SqlConnector("userdb", parse_datamap(wishe_datamap(db_url)).sql("userdb"),
                             engine)
    statements = 0

    def counted(*_: Any) -> None:
        nonlocal statements
        statements += 1

    # The lists the connector cuts into statements, however long: a chunk each.
    listed: list[int] = []
    chunks = Locator.chunks

    def recorded(self: Locator, items: Sequence[Any]) -> Iterator[list[Any]]:
        listed.append(len(items))
        return chunks(self, items)

    monkeypatch.setattr(Locator, "chunks", recorded)
    sa.event.listen(engine, "before_cursor_execute", counted)
    size = connector.locator.chunk
    costs = []
    for users in batches():
        statements, listed = 0, []
        with python_lines(connectors.sql, connectors.sql_ownership,
                          connectors.sql_holds) as lines:
            erase_as_the_pipeline_does(connector, by_email(users))
        pieces = sum(-(-n // size) for n in listed)  # a chunk a statement; none if empty
        costs.append((statements, pieces, len(listed), lines))
    connector.dispose()
    (small, small_chunks, small_lists, small_lines), (large, large_chunks, large_lists,
                                                       large_lines) = costs
    # Every statement comes from one chunk of a list, and the lists are the same at both
    # sizes: only lists longer than a chunk cost more (at 200 subjects, not per subject).
    assert large_lists == small_lists
    assert large - small <= large_chunks - small_chunks, costs[:2]
    assert_linear(small_lines, large_lines)


# -- objects -----------------------------------------------------------------------------------
@contextmanager
def s3_calls(client: Any) -> Iterator[Counter[str]]:
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register("before-call.s3", count)
    try:
        yield calls
    finally:
        client.meta.events.unregister("before-call.s3", count)


def test_objects_connector_s3_calls_and_python_work_grow_linearly() -> None:
    per_user = 3  # objects under each user's prefix
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        # Unversioned: moto lists a versioned bucket's every version for each prefix
        # (about 0.1 s a listing here); which listing the connector makes is the same.
        client.create_bucket(Bucket="uploads")
        for u in range(1, USERS + 1):
            for k in range(per_user):
                client.put_object(Bucket="uploads", Key=f"uploads/{u}/{k}.jpg", Body=b"x")
        system = ObjectsSystem.model_validate({"kind": "objects", "buckets": {"uploads": {
            "category": "media", "ownership": [{"key_template": "uploads/{user_id}/"}]}}})
        # One worker: the listings run in this thread, where their Python work is counted.
        connector = ObjectsConnector("media", system, client=client, workers=1)
        costs = []
        for users in batches():
            subjects = [Subject(request_id=f"r{u}", identities=(
                Identity(type=IdentityType.USER_ID, value=str(u)),)) for u in users]
            with s3_calls(client) as calls, python_lines(connectors.objects,
                                                         connectors.s3) as lines:
                erased = connector.erase(subjects, None, {})
                verified = connector.verify(subjects, None)
            assert all(o.total("deleted") == per_user for o in erased.values())
            assert all(o.total("remaining") == 0 for o in verified.values())
            costs.append((len(users), calls, lines))
    (n_small, small, small_lines), (n_large, large, large_lines) = costs
    # What S3 can only be asked one prefix at a time: a listing per subject, by erase
    # and by verify (one page each here). Deletions go a thousand objects a call.
    for n, calls in ((n_small, small), (n_large, large)):
        assert calls["ListObjectsV2"] == 2 * n
        assert calls["DeleteObjects"] == -(-n * per_user // DELETE_BATCH)
    # The rest is per bucket and call, whatever the batch.
    fixed = (set(small) | set(large)) - {"ListObjectsV2", "DeleteObjects"}
    assert {op: small[op] for op in fixed} == {op: large[op] for op in fixed}
    assert_linear(small_lines, large_lines)


# -- logs --------------------------------------------------------------------------------------
@contextmanager
def file_opens(paths: Sequence[Path]) -> Iterator[Counter[str]]:
    """Opens of these files (by name), through `open` or `os.open`."""
    opens: Counter[str] = Counter()
    watched = {os.path.realpath(p): p.name for p in paths}
    real_open, real_os_open = builtins.open, os.open

    def note(path: Any) -> None:
        if isinstance(path, str | Path) and (name := watched.get(os.path.realpath(path))):
            opens[name] += 1

    def counted_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        note(file)
        return real_open(file, *args, **kwargs)

    def counted_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        note(path)
        return real_os_open(path, *args, **kwargs)

    patched: list[tuple[Any, str, Callable[..., Any]]] = [
        (builtins, "open", counted_open), (os, "open", counted_os_open)]
    for owner, name, replacement in patched:
        setattr(owner, name, replacement)
    try:
        yield opens
    finally:
        builtins.open, os.open = real_open, real_os_open


def test_logs_connector_reads_each_file_a_bounded_number_of_times(tmp_path: Path) -> None:
    files = [tmp_path / "logs" / name for name in ("access.log", "access.log.1", "access.log.2")]
    for i, path in enumerate(files):
        # Every user in every file, twice, among lines of nobody.
        text: list[str] = []
        for u in range(1, USERS + 1):
            text.append(f"36.1.2.{i} - - [01/Dec/2026:10:00:00 +0800] \"GET /item?"
                         f"email=user{u}%40example.com HTTP/1.1\" 200 512")
            text.append(f"36.1.2.{i} - - [01/Dec/2026:10:00:01 +0800] \"GET /api/me?"
                         f"uid={100000 + u} HTTP/1.1\" 200 64")
            text.append(f"36.1.2.{i} - - [01/Dec/2026:10:00:02 +0800] \"GET / HTTP/1.1\" 200 9")
        write(path, text)
    spec = LogsSystem.model_validate({"kind": "logs", "sources": {"access": {
        "path": "logs/access.log*", "format": "text", "identities": ["email", "user_id"]}}})
    connector = LogsConnector("applogs", spec, base_dir=tmp_path, state_dir=tmp_path / ".state")
    costs = []
    for users in batches():
        subjects = [Subject(request_id=f"r{u}", identities=(
            Identity(type=IdentityType.EMAIL, value=f"user{u}@example.com"),
            Identity(type=IdentityType.USER_ID, value=str(100000 + u)))) for u in users]
        keys = {s.request_id: Pseudonymizer(new_key()) for s in subjects}
        with file_opens(files) as opens, python_lines(
                connectors.logs.connector, connectors.logs.matching,
                connectors.logs.prefilter, connectors.logs.rewrite) as lines:
            erased = connector.erase(subjects, None, keys)
            verified = connector.verify(subjects, None)
        assert all(o.total("anonymized") == 2 * len(files) for o in erased.values())
        assert all(o.total("remaining") == 0 for o in verified.values())
        costs.append((opens, lines))
    (small, small_lines), (large, large_lines) = costs
    # Each file is opened as often whatever the batch: for the erase's pass, for its copy
    # of the unchanged parts into the new version, for the verification's pass.
    assert set(large) == {p.name for p in files}
    assert large == small
    assert max(large.values()) <= 3
    assert_linear(small_lines, large_lines)
