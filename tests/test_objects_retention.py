"""Retention sweeps of object buckets (privacy policy 6.3.1(3)) on moto's S3 server: a
sweep deletes exactly the keys whose period ran out, with every version and delete
marker, keeps what legal holds, undated keys and Object Lock keep, takes only orphans for
an `orphans_of` rule, never touches a version written after its listing, counts what it
did, and does nothing the second time; a dry run predicts it."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from unittest import mock
from urllib.parse import urlencode

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import objects_retention
from connectors.objects import ObjectsError
from connectors.objects_retention import ObjectsExpired, ObjectsSwept, expired, sweep
from dsrflow.datamap import ObjectRetentionRule, ObjectsSystem, parse_datamap

CUTOFF = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TAG = "expires_from"
DAY = 86400
ORPHANS = {"orphans_of": {"system": "userdb", "table": "users", "column": "id"}}
Snapshot = dict[tuple[str, str], tuple[bytes | None, bool]]


# -- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )


def new_bucket(client: Any, versioned: bool = True, lock: bool = False) -> str:
    name = f"r-{uuid.uuid4().hex[:16]}"
    if lock:
        client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    else:
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name,
                                         VersioningConfiguration={"Status": "Enabled"})
    return name


def media(endpoint: str, bucket: str, rule: dict[str, Any],
          ownership: list[dict[str, Any]] | None = None,
          ) -> tuple[ObjectsSystem, ObjectRetentionRule]:
    """A data map with one objects system and one retention rule on `bucket` (and the SQL
    table an `orphans_of` rule names)."""
    doc = {"version": "t1", "policy_version": "p1", "systems": {
        "userdb": {"kind": "sql", "url": "sqlite://", "tables": {"users": {
            "primary_key": ["id"], "identities": [{"type": "user_id", "column": "id"}],
            "columns": {"id": {"category": "account", "action": "delete"}}}}},
        "media": {"kind": "objects", "endpoint_url": endpoint,
                  "buckets": {bucket: {"category": "media", "ownership": ownership or [
                      {"key_template": "uploads/{user_id}/"}]}},
                  "retention": [{"name": "uploads-30d", "bucket": bucket, "after_days": 30,
                                 "counts_from": f"tag:{TAG}", **rule}]},
    }}
    system = parse_datamap(doc).systems["media"]
    assert isinstance(system, ObjectsSystem)
    return system, system.retention[0]


def put(client: Any, bucket: str, key: str, body: bytes, **tags: str) -> str:
    extra = {"Tagging": urlencode(tags)} if tags else {}
    return str(client.put_object(Bucket=bucket, Key=key, Body=body, **extra).get("VersionId"))


def stamp(when: datetime | date) -> str:
    return when.isoformat()


def snapshot(client: Any, bucket: str) -> Snapshot:
    """Every version and delete marker: (key, version id) -> (bytes or None, is latest)."""
    out: Snapshot = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
            out[(v["Key"], v["VersionId"])] = (body["Body"].read(), v["IsLatest"])
        for m in page.get("DeleteMarkers", []):
            out[(m["Key"], m["VersionId"])] = (None, m["IsLatest"])
    return out


def objects_of(client: Any, bucket: str) -> dict[str, bytes]:
    """An unversioned bucket: key -> bytes."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def count_calls(client: Any, operation: str) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    client.meta.events.register(
        f"provide-client-params.s3.{operation}", lambda params, **_: calls.append(params))
    return calls


class Accounts:
    """A holds or existing-accounts callback: answers from a fixed set, records each call."""

    def __init__(self, answer: Iterable[str]) -> None:
        self.answer = set(answer)
        self.calls: list[set[str]] = []

    def __call__(self, accounts: Iterable[str]) -> set[str]:
        asked = set(accounts)
        self.calls.append(asked)
        return asked & self.answer


class Wrapped:
    """A client whose listing call runs `after` once, right after its first answer."""

    def __init__(self, client: Any, operation: str, after: Callable[[], None]) -> None:
        self._client = client
        self._operation = operation
        self._after: Callable[[], None] | None = after

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name != self._operation:
            return attr

        def listing(**kwargs: Any) -> Any:
            page = attr(**kwargs)
            after, self._after = self._after, None
            if after is not None:
                after()
            return page

        return listing


# -- the property -----------------------------------------------------------------------------
def _spelled(rng: random.Random, offset: int) -> tuple[str, datetime]:
    """A date `offset` seconds from the cutoff, spelled one of several ISO 8601 ways, and
    the instant that spelling means."""
    when = CUTOFF + timedelta(seconds=offset)
    form = rng.randrange(4)
    if form == 0:
        return when.strftime("%Y-%m-%dT%H:%M:%SZ"), when
    if form == 1:  # no zone: UTC
        return when.replace(tzinfo=None).isoformat(), when
    if form == 2:
        return when.astimezone(timezone(timedelta(hours=8))).isoformat(), when
    day = when.date()  # a date alone: its midnight, UTC
    return day.isoformat(), datetime(day.year, day.month, day.day, tzinfo=UTC)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), batch=st.sampled_from([1, 3, 1000]),
       page=st.sampled_from([2, 1000]), hold=st.booleans())
def test_property_a_sweep_deletes_exactly_the_expired_keys_no_hold_keeps(
    s3: Any, s3_endpoint: str, seed: int, batch: int, page: int, hold: bool,
) -> None:
    rng = random.Random(seed)
    bucket = new_bucket(s3)
    system, rule = media(s3_endpoint, bucket, {})
    users = [str(i) for i in range(1, 6)]
    holds = Accounts(rng.sample(users, rng.randint(0, 2))) if hold else None

    entries: dict[str, int] = {}  # key -> versions and delete markers written
    fate: dict[str, str] = {}  # key -> gone / kept (not expired) / held / undated
    dates: dict[str, datetime] = {}
    for i in range(rng.randint(4, 12)):
        owner = rng.choice(users)
        key = f"uploads/{owner}/{i}{rng.choice(['.jpg', '/clip.mp4', ' x+y.png'])}"
        entries[key] = 0
        newest_date: datetime | None = None
        for _ in range(rng.randint(1, 3)):
            kind = rng.random()
            if kind < 0.1:
                tags = {}
                newest_date = None
            elif kind < 0.2:
                tags = {TAG: rng.choice(["soon", "2026-13-45", "", "yesterday"])}
                newest_date = None
            else:
                offset = 0 if kind < 0.25 else rng.randint(-3 * DAY, 3 * DAY)
                spelled, newest_date = _spelled(rng, offset)
                tags = {TAG: spelled}
            put(s3, bucket, key, rng.randbytes(rng.randint(0, 40)), **tags)
            entries[key] += 1
            if rng.random() < 0.25:  # a delete marker, between versions or on top
                s3.delete_object(Bucket=bucket, Key=key)
                entries[key] += 1
        if rng.random() < 0.1:  # nothing left but delete markers: no version to date
            s3.delete_object(Bucket=bucket, Key=key)
            entries[key] += 1
            for (k, vid), (body, _latest) in snapshot(s3, bucket).items():
                if k == key and body is not None:
                    s3.delete_object(Bucket=bucket, Key=key, VersionId=vid)
                    entries[key] -= 1
            newest_date = None
        if newest_date is None:
            fate[key] = "undated"
        elif not newest_date < CUTOFF:
            fate[key] = "kept"
        elif holds is not None and owner in holds.answer:
            fate[key] = "held"
            dates[key] = newest_date
        else:
            fate[key] = "gone"
            dates[key] = newest_date

    gone = {k for k, f in fate.items() if f == "gone"}
    want = ObjectsExpired(
        objects=len(gone), versions=sum(entries[k] for k in gone),
        held=sum(1 for f in fate.values() if f == "held"),
        undated=sum(1 for f in fate.values() if f == "undated"),
        oldest=min(dates.values(), default=None),
    )
    before = snapshot(s3, bucket)
    with mock.patch.object(objects_retention, "LIST_PAGE", page):
        counted = expired(s3, system, rule, CUTOFF, holds, None)
        swept = sweep(s3, system, rule, CUTOFF, holds, None, batch=batch)
        after = snapshot(s3, bucket)
        again = sweep(s3, system, rule, CUTOFF, holds, None, batch=batch)

    assert counted == want
    assert swept == ObjectsSwept(
        objects=want.objects, versions=want.versions, held=want.held, undated=want.undated,
        locked=0, batches=math.ceil(len(entries) / batch),
        longest_batch_s=swept.longest_batch_s)
    # Gone: every version and marker. Everything else: the same version ids and bytes.
    assert after == {vid: v for vid, v in before.items() if vid[0] not in gone}
    assert (again.objects, again.versions, again.locked) == (0, 0, 0)
    assert (again.held, again.undated) == (want.held, want.undated)
    assert snapshot(s3, bucket) == after
    if holds is not None:
        # Asked once per batch at most (dry run, sweep, sweep), only about expired keys'
        # owners, and about every one of them.
        expired_owners = {k.split("/")[1] for k, f in fate.items() if f in ("gone", "held")}
        batches = math.ceil(len(entries) / batch)
        assert len(holds.calls) <= 1 + 2 * batches
        assert all(call <= expired_owners for call in holds.calls)
        assert set().union(*holds.calls) == expired_owners


# -- counted from LastModified ----------------------------------------------------------------
@pytest.mark.parametrize("versioned", [True, False])
def test_last_modified_counts_from_the_newest_write_and_reads_no_tag(
    s3: Any, s3_endpoint: str, versioned: bool,
) -> None:
    """LastModified cannot be set in moto: objects written now are past a cutoff in the
    future and not past one in the past. No hold covers the rule, or the owners are read
    from the keys: no tag is read."""
    bucket = new_bucket(s3, versioned=versioned)
    system, rule = media(s3_endpoint, bucket, {"counts_from": "last_modified"})
    written = datetime.now(UTC)
    for i in range(5):
        put(s3, bucket, f"uploads/{i % 2 + 1}/{i}.jpg", b"x" * i)
    if versioned:
        put(s3, bucket, "uploads/2/1.jpg", b"second version")
        gone = put(s3, bucket, "uploads/3/gone.jpg", b"gone")
        s3.delete_object(Bucket=bucket, Key="uploads/3/gone.jpg")
        s3.delete_object(Bucket=bucket, Key="uploads/3/gone.jpg", VersionId=gone)  # a marker
    keys, entries = (6, 7) if versioned else (5, 5)
    tag_reads = count_calls(s3, "GetObjectTagging")
    before = snapshot(s3, bucket)

    past = written - timedelta(days=1)
    assert expired(s3, system, rule, past, None, None) == ObjectsExpired(0, 0, 0, 0, None)
    assert sweep(s3, system, rule, past, None, None) == ObjectsSwept(0, 0, 0, 0, 0, 0, 0.0)
    assert snapshot(s3, bucket) == before

    future = written + timedelta(days=1)
    holds = Accounts({"1"})
    counted = expired(s3, system, rule, future, holds, None)
    assert (counted.objects, counted.versions, counted.held, counted.undated) == (
        keys - 3, entries - 3, 3, 0)
    assert counted.oldest is not None
    assert abs(counted.oldest - written) < timedelta(minutes=1)
    swept = sweep(s3, system, rule, future, holds, None, batch=2)
    assert (swept.objects, swept.held, swept.batches) == (keys - 3, 3, math.ceil(keys / 2))
    assert {k for k, _ in snapshot(s3, bucket)} == {f"uploads/1/{i}.jpg" for i in (0, 2, 4)}
    swept = sweep(s3, system, rule, future, None, None, batch=2)
    assert (swept.objects, swept.versions) == (3, 3)
    assert snapshot(s3, bucket) == {}
    assert tag_reads == []
    assert entries == len(before)


# -- orphans ----------------------------------------------------------------------------------
def test_orphans_of_takes_only_keys_of_accounts_that_no_longer_exist(
    s3: Any, s3_endpoint: str,
) -> None:
    bucket = new_bucket(s3)
    system, rule = media(s3_endpoint, bucket, ORPHANS)
    old, new = stamp(CUTOFF - timedelta(days=2)), stamp(CUTOFF + timedelta(days=2))
    put(s3, bucket, "uploads/1/a.jpg", b"1a", expires_from=old)  # account exists
    put(s3, bucket, "uploads/2/a.jpg", b"2a", expires_from=old)  # orphan
    put(s3, bucket, "uploads/2/b.jpg", b"2b-1", expires_from=old)
    put(s3, bucket, "uploads/2/b.jpg", b"2b-2", expires_from=old)  # orphan, two versions
    put(s3, bucket, "uploads/2/fresh.jpg", b"2f", expires_from=new)  # orphan, not expired
    put(s3, bucket, "uploads/3/a.jpg", b"3a", expires_from=old)  # account exists
    put(s3, bucket, "uploads/4/x.jpg", b"4x", expires_from=old)  # orphan, held
    put(s3, bucket, "uploads/loose.jpg", b"?", expires_from=old)  # nobody's: not an orphan
    before = snapshot(s3, bucket)
    existing, holds = Accounts({"1", "3"}), Accounts({"4"})

    counted = expired(s3, system, rule, CUTOFF, holds, existing)
    swept = sweep(s3, system, rule, CUTOFF, holds, existing, batch=3)

    assert counted == ObjectsExpired(objects=2, versions=3, held=1, undated=0,
                                     oldest=CUTOFF - timedelta(days=2))
    assert (swept.objects, swept.versions, swept.held, swept.undated) == (2, 3, 1, 0)
    gone = {"uploads/2/a.jpg", "uploads/2/b.jpg"}
    assert snapshot(s3, bucket) == {k: v for k, v in before.items() if k[0] not in gone}
    # Asked once per batch about the owners of its expired keys (the third batch holds
    # only the key that names nobody); holds only about orphans'.
    assert swept.batches == 3
    assert existing.calls == [{"1", "2", "3", "4"}, {"1", "2"}, {"3", "4"}]
    assert holds.calls == [{"2", "4"}, {"2"}, {"4"}]
    assert sweep(s3, system, rule, CUTOFF, holds, existing).objects == 0


# -- undated keys, unreadable owners ----------------------------------------------------------
def test_undated_keys_are_kept_and_counted(s3: Any, s3_endpoint: str) -> None:
    bucket = new_bucket(s3)
    system, rule = media(s3_endpoint, bucket, {})
    old = stamp(CUTOFF - timedelta(days=5))
    put(s3, bucket, "uploads/1/none.jpg", b"n")
    put(s3, bucket, "uploads/1/garbage.jpg", b"g", expires_from="soon")
    put(s3, bucket, "uploads/1/bad.jpg", b"b", expires_from="2026-13-45")
    put(s3, bucket, "uploads/1/empty.jpg", b"e", expires_from="")
    put(s3, bucket, "uploads/1/other-tag.jpg", b"o", created=old)
    put(s3, bucket, "uploads/1/newest.jpg", b"v1", expires_from=old)
    put(s3, bucket, "uploads/1/newest.jpg", b"v2")  # only the newest version's tag counts
    version = put(s3, bucket, "uploads/1/markers.jpg", b"m", expires_from=old)
    s3.delete_object(Bucket=bucket, Key="uploads/1/markers.jpg")
    s3.delete_object(Bucket=bucket, Key="uploads/1/markers.jpg", VersionId=version)
    put(s3, bucket, "uploads/1/old.jpg", b"old", expires_from=old)
    before = snapshot(s3, bucket)

    counted = expired(s3, system, rule, CUTOFF, None, None)
    swept = sweep(s3, system, rule, CUTOFF, None, None)

    assert counted == ObjectsExpired(1, 1, 0, 7, CUTOFF - timedelta(days=5))
    assert (swept.objects, swept.versions, swept.held, swept.undated) == (1, 1, 0, 7)
    assert snapshot(s3, bucket) == {k: v for k, v in before.items()
                                    if k[0] != "uploads/1/old.jpg"}


def test_a_key_whose_owner_cannot_be_read_is_kept_only_under_a_hold(
    s3: Any, s3_endpoint: str,
) -> None:
    bucket = new_bucket(s3)
    system, rule = media(s3_endpoint, bucket, {"prefix": ""})
    old = stamp(CUTOFF - timedelta(days=1))
    for key in ("uploads/loose.jpg", "other/9/a.jpg", "uploads/2/a.jpg"):
        put(s3, bucket, key, key.encode(), expires_from=old)

    counted = expired(s3, system, rule, CUTOFF, Accounts(set()), None)
    swept = sweep(s3, system, rule, CUTOFF, Accounts(set()), None)
    assert (counted.objects, counted.held) == (swept.objects, swept.held) == (1, 2)
    assert {k for k, _ in snapshot(s3, bucket)} == {"uploads/loose.jpg", "other/9/a.jpg"}

    swept = sweep(s3, system, rule, CUTOFF, None, None)
    assert (swept.objects, swept.held) == (2, 0)
    assert snapshot(s3, bucket) == {}


def test_owner_tag_of_every_version_decides_when_the_key_names_nobody(
    s3: Any, s3_endpoint: str,
) -> None:
    """Keys outside the key template belong to whoever their `owner` tag names, on every
    version: an older version of someone held keeps the key, and a version without one
    leaves the owner unknown. Without a hold, only the newest version's date is read."""
    bucket = new_bucket(s3)
    system, rule = media(s3_endpoint, bucket, {},
                         [{"key_template": "uploads/{user_id}/"}, {"tag": "owner"}])
    old = stamp(CUTOFF - timedelta(days=1))
    put(s3, bucket, "shared/a.jpg", b"a1", owner="7", expires_from=old)
    put(s3, bucket, "shared/a.jpg", b"a2", owner="7", expires_from=old)
    put(s3, bucket, "shared/b.jpg", b"b1", owner="8", expires_from=old)
    put(s3, bucket, "shared/b.jpg", b"b2", owner="7", expires_from=old)
    put(s3, bucket, "shared/c.jpg", b"c1", expires_from=old)
    put(s3, bucket, "shared/c.jpg", b"c2", owner="7", expires_from=old)
    put(s3, bucket, "shared/d.jpg", b"d1", owner="../8", expires_from=old)
    before = snapshot(s3, bucket)

    holds = Accounts({"8"})
    swept = sweep(s3, system, rule, CUTOFF, holds, None)
    assert (swept.objects, swept.versions, swept.held) == (1, 2, 3)
    assert holds.calls == [{"7", "8"}]
    assert snapshot(s3, bucket) == {k: v for k, v in before.items() if k[0] != "shared/a.jpg"}

    tag_reads = count_calls(s3, "GetObjectTagging")
    swept = sweep(s3, system, rule, CUTOFF, None, None)
    assert (swept.objects, swept.versions, swept.held) == (3, 5, 0)
    assert len(tag_reads) == 3  # the newest version's date, key by key
    assert snapshot(s3, bucket) == {}


# -- unversioned buckets ----------------------------------------------------------------------
def test_unversioned_bucket_deletes_by_key_and_leaves_a_rewritten_object(
    s3: Any, s3_endpoint: str,
) -> None:
    bucket = new_bucket(s3, versioned=False)
    system, rule = media(s3_endpoint, bucket, {})
    old, new = stamp(CUTOFF - timedelta(days=1)), stamp(CUTOFF + timedelta(seconds=1))
    for i in range(4):
        put(s3, bucket, f"uploads/{i}/old.jpg", b"old", expires_from=old)
    put(s3, bucket, "uploads/1/new.jpg", b"new", expires_from=new)
    put(s3, bucket, "uploads/1/none.jpg", b"none")
    put(s3, bucket, "uploads/2/rewritten.jpg", b"first", expires_from=old)
    counted = expired(s3, system, rule, CUTOFF, None, None)
    assert counted == ObjectsExpired(5, 5, 0, 1, CUTOFF - timedelta(days=1))

    def rewrite() -> None:  # between the listing and the deletion, same tag, new bytes
        put(s3, bucket, "uploads/2/rewritten.jpg", b"second!", expires_from=old)

    racing = Wrapped(s3, "list_objects_v2", rewrite)
    swept = sweep(racing, system, rule, CUTOFF, None, None, batch=2)

    assert (swept.objects, swept.versions, swept.undated, swept.locked) == (4, 4, 1, 0)
    assert swept.batches == 4  # seven keys, two at a time
    assert objects_of(s3, bucket) == {"uploads/1/new.jpg": b"new", "uploads/1/none.jpg": b"none",
                                      "uploads/2/rewritten.jpg": b"second!"}
    # Its tag still says expired: the next sweep takes it.
    assert sweep(s3, system, rule, CUTOFF, None, None).objects == 1


# -- written after the listing ------------------------------------------------------------------
def test_a_version_written_after_the_listing_survives(s3: Any, s3_endpoint: str) -> None:
    bucket = new_bucket(s3)
    system, rule = media(s3_endpoint, bucket, {})
    old = stamp(CUTOFF - timedelta(days=3))
    put(s3, bucket, "uploads/1/photo.jpg", b"v1", expires_from=old)
    put(s3, bucket, "uploads/1/photo.jpg", b"v2", expires_from=old)
    s3.delete_object(Bucket=bucket, Key="uploads/1/photo.jpg")
    put(s3, bucket, "uploads/2/other.jpg", b"o", expires_from=old)
    written: list[str] = []

    def upload() -> None:
        written.append(put(s3, bucket, "uploads/1/photo.jpg", b"v3, new", expires_from=old))

    swept = sweep(Wrapped(s3, "list_object_versions", upload), system, rule, CUTOFF, None,
                  None)

    assert (swept.objects, swept.versions) == (2, 4)  # every listed entry of both keys
    assert snapshot(s3, bucket) == {("uploads/1/photo.jpg", written[0]): (b"v3, new", True)}


# -- Object Lock --------------------------------------------------------------------------------
def test_locked_versions_are_kept_counted_and_not_served(s3: Any, s3_endpoint: str) -> None:
    bucket = new_bucket(s3, lock=True)
    system, rule = media(s3_endpoint, bucket, {})
    old = stamp(CUTOFF - timedelta(days=3))
    locked_a = put(s3, bucket, "uploads/1/a.jpg", b"a1", expires_from=old)
    put(s3, bucket, "uploads/1/a.jpg", b"a2", expires_from=old)
    locked_c = put(s3, bucket, "uploads/1/c.jpg", b"c1", expires_from=old)
    s3.delete_object(Bucket=bucket, Key="uploads/1/c.jpg")  # hidden behind a marker
    for key, version in (("uploads/1/a.jpg", locked_a), ("uploads/1/c.jpg", locked_c)):
        s3.put_object_legal_hold(Bucket=bucket, Key=key, VersionId=version,
                                 LegalHold={"Status": "ON"})
    put(s3, bucket, "uploads/1/b.jpg", b"b", expires_from=old)
    c_before = {k: v for k, v in snapshot(s3, bucket).items() if k[0] == "uploads/1/c.jpg"}

    swept = sweep(s3, system, rule, CUTOFF, None, None)

    assert (swept.objects, swept.versions, swept.locked) == (1, 2, 2)
    after = snapshot(s3, bucket)
    a = {vid: v for (key, vid), v in after.items() if key == "uploads/1/a.jpg"}
    assert a[locked_a] == (b"a1", False)  # stored,
    assert len(a) == 2 and next(v for vid, v in a.items() if vid != locked_a) == (None, True)
    with pytest.raises(ClientError):  # but no longer served
        s3.head_object(Bucket=bucket, Key="uploads/1/a.jpg")
    assert {k: v for k, v in after.items() if k[0] == "uploads/1/c.jpg"} == c_before
    assert not any(k[0] == "uploads/1/b.jpg" for k in after)

    again = sweep(s3, system, rule, CUTOFF, None, None)
    assert (again.objects, again.versions, again.locked) == (0, 0, 2)
    assert snapshot(s3, bucket) == after
    for key, version in (("uploads/1/a.jpg", locked_a), ("uploads/1/c.jpg", locked_c)):
        s3.put_object_legal_hold(Bucket=bucket, Key=key, VersionId=version,
                                 LegalHold={"Status": "OFF"})


# -- errors and misuse --------------------------------------------------------------------------
def test_errors_name_the_operation_and_code_never_a_key_or_account(
    s3: Any, s3_endpoint: str,
) -> None:
    bucket = new_bucket(s3)
    system, rule = media(s3_endpoint, bucket, {})
    put(s3, bucket, "uploads/u-4711/face.jpg", b"f", expires_from=stamp(CUTOFF))

    class Refusing:
        def __getattr__(self, name: str) -> Any:
            return getattr(s3, name)

        def get_object_tagging(self, **kwargs: Any) -> Any:
            raise ClientError({"Error": {"Code": "AccessDenied",
                                         "Message": f"denied: {kwargs['Key']}"}},
                              "GetObjectTagging")

    with pytest.raises(ObjectsError) as caught:
        sweep(Refusing(), system, rule, CUTOFF, None, None)
    assert str(caught.value) == (f"retention uploads-30d: buckets.{bucket}: "
                                 "get_object_tagging failed: AccessDenied")
    missing, _ = media(s3_endpoint, "r-no-such-bucket", {})
    with pytest.raises(ObjectsError, match=r"get_bucket_versioning failed: NoSuchBucket$"):
        expired(s3, missing, missing.retention[0], CUTOFF, None, None)


def test_misuse_is_refused_before_any_request(s3: Any, s3_endpoint: str) -> None:
    system, rule = media(s3_endpoint, "r-not-asked", {})
    orphan_system, orphan_rule = media(s3_endpoint, "r-not-asked", ORPHANS)
    with pytest.raises(ValueError, match="timezone-aware"):
        sweep(s3, system, rule, CUTOFF.replace(tzinfo=None), None, None)
    with pytest.raises(ValueError, match="orphans_of"):
        sweep(s3, orphan_system, orphan_rule, CUTOFF, None, None)
    with pytest.raises(ValueError, match="orphans_of"):
        expired(s3, system, rule, CUTOFF, None, Accounts(set()))
