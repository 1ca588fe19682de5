"""The object-storage connector against moto: a real HTTP S3 endpoint (ThreadedMotoServer)
for most tests, the in-process mock where only volume matters. Precision (nothing of anyone
else is touched, byte for byte), versions and delete markers, object lock, tags, keys from
SQL, batching, idempotence, unsafe identities, access packages and scope."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from connectors.objects import (
    ObjectsConfigError,
    ObjectsConnector,
    ObjectsError,
    UnsafeKey,
    fill_template,
)
from dsrflow.datamap import ObjectsSystem, parse_datamap
from dsrflow.identities import Identity, IdentityType, Subject
from examples.wishe import objects as wishe_objects
from examples.wishe.generate import build_world

NO_KEYS: dict[str, Any] = {}


# -- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )


def new_bucket(client: Any, versioned: bool = False, lock: bool = False) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    if lock:
        client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    else:
        client.create_bucket(Bucket=name)
    if versioned and not lock:
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def system(buckets: dict[str, dict[str, Any]], **extra: Any) -> ObjectsSystem:
    return ObjectsSystem.model_validate({"kind": "objects", "buckets": buckets, **extra})


def prefix_bucket(template: str = "uploads/{user_id}/", **extra: Any) -> dict[str, Any]:
    return {"category": "media", "ownership": [{"key_template": template}], **extra}


def subject(rid: str, **identities: str) -> Subject:
    return Subject(
        request_id=rid,
        identities=tuple(Identity(type=IdentityType(t), value=v) for t, v in identities.items()),
    )


def put(client: Any, bucket: str, key: str, body: bytes | None = None, **extra: Any) -> str:
    data = body if body is not None else hashlib.sha256(key.encode()).digest()
    return str(client.put_object(Bucket=bucket, Key=key, Body=data, **extra).get("VersionId"))


def marker_only(client: Any, bucket: str, key: str) -> None:
    """Leave a delete marker and nothing else at `key`."""
    version = put(client, bucket, key)
    client.delete_object(Bucket=bucket, Key=key)
    client.delete_object(Bucket=bucket, Key=key, VersionId=version)


def snapshot(client: Any, bucket: str) -> dict[tuple[str, str], tuple[bytes | None, bool]]:
    """Every version and delete marker: (key, version id) -> (bytes or None, is latest)."""
    out: dict[tuple[str, str], tuple[bytes | None, bool]] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
            out[(v["Key"], v["VersionId"])] = (body["Body"].read(), v["IsLatest"])
        for m in page.get("DeleteMarkers", []):
            out[(m["Key"], m["VersionId"])] = (None, m["IsLatest"])
    return out


def count_calls(client: Any, operation: str) -> list[dict[str, Any]]:
    """Record the parameters of every call of `operation` the client makes."""
    calls: list[dict[str, Any]] = []
    client.meta.events.register(
        f"provide-client-params.s3.{operation}", lambda params, **_: calls.append(params)
    )
    return calls


def op_hash(operation: str, bucket: str) -> str:
    return hashlib.sha256(f"{operation} bucket={bucket}".encode()).hexdigest()


# -- precision ------------------------------------------------------------------------------
def test_prefix_of_one_user_does_not_reach_another(s3: Any) -> None:
    bucket = new_bucket(s3)
    mine = ["uploads/1/a.jpg", "uploads/1/2026/11/b.mp4"]
    others = ["uploads/12/a.jpg", "uploads/123/x.jpg", "uploads/1", "uploads/1.jpg",
              "other/1/a.jpg", "uploads/21/1/a.jpg"]
    for key in mine + others:
        put(s3, bucket, key)
    before = {k: v for k, v in snapshot(s3, bucket).items() if k[0] in others}
    connector = ObjectsConnector("media", system({bucket: prefix_bucket()}), client=s3)

    outcome = connector.erase([subject("r1", user_id="1")], None, NO_KEYS)["r1"]

    part = outcome.parts[bucket]
    assert (part.found, part.deleted, part.retained) == (2, 2, 0)
    assert part.statements == [op_hash("delete_objects", bucket)]
    assert snapshot(s3, bucket) == before  # byte for byte, nothing else changed
    assert connector.verify([subject("r1", user_id="1")], None)["r1"].parts[bucket].remaining == 0


def test_versions_and_delete_markers_all_go(s3: Any) -> None:
    bucket = new_bucket(s3, versioned=True)
    for body in (b"v1", b"v2", b"v3"):
        put(s3, bucket, "uploads/5/photo.jpg", body)
    put(s3, bucket, "uploads/5/gone.jpg", b"old")
    s3.delete_object(Bucket=bucket, Key="uploads/5/gone.jpg")  # a delete marker on top
    marker_only(s3, bucket, "uploads/5/only-marker.jpg")
    for body in (b"w1", b"w2"):
        put(s3, bucket, "uploads/6/photo.jpg", body)
    before = {k: v for k, v in snapshot(s3, bucket).items() if k[0].startswith("uploads/6/")}
    connector = ObjectsConnector("media", system({bucket: prefix_bucket()}), client=s3)
    who = [subject("r5", user_id="5")]

    part = connector.erase(who, None, NO_KEYS)["r5"].parts[bucket]

    assert (part.found, part.deleted) == (3, 3)
    assert s3.list_object_versions(Bucket=bucket, Prefix="uploads/5/").get("Versions") is None
    assert s3.list_object_versions(Bucket=bucket, Prefix="uploads/5/").get("DeleteMarkers") is None
    assert snapshot(s3, bucket) == before
    check = connector.verify(who, None)["r5"].parts[bucket]
    assert (check.found, check.remaining) == (0, 0)


def test_verify_counts_keys_left_behind(s3: Any) -> None:
    bucket = new_bucket(s3, versioned=True)
    put(s3, bucket, "uploads/8/a.jpg")
    marker_only(s3, bucket, "uploads/8/b.jpg")  # a marker alone still names a key
    connector = ObjectsConnector("media", system({bucket: prefix_bucket()}), client=s3)
    part = connector.verify([subject("r8", user_id="8")], None)["r8"].parts[bucket]
    assert (part.found, part.remaining, part.retained) == (2, 2, 0)


def test_second_erase_finds_nothing_and_changes_nothing(s3: Any) -> None:
    bucket = new_bucket(s3, versioned=True)
    put(s3, bucket, "uploads/3/a.jpg")
    put(s3, bucket, "uploads/3/a.jpg")
    put(s3, bucket, "uploads/4/a.jpg")
    connector = ObjectsConnector("media", system({bucket: prefix_bucket()}), client=s3)
    who = [subject("r3", user_id="3")]
    first = connector.erase(who, None, NO_KEYS)["r3"].parts[bucket]
    after_first = snapshot(s3, bucket)
    deletes = count_calls(s3, "DeleteObjects")

    second = connector.erase(who, None, NO_KEYS)["r3"].parts[bucket]

    assert (first.found, first.deleted) == (1, 1)
    assert (second.found, second.deleted, second.retained) == (0, 0, 0)
    assert deletes == []
    assert snapshot(s3, bucket) == after_first


# -- object lock ----------------------------------------------------------------------------
def test_object_lock_retains_with_reason_and_verifies_clean(s3: Any) -> None:
    bucket = new_bucket(s3, lock=True)
    until = (datetime.now(UTC) + timedelta(days=400)).replace(microsecond=0)
    held_v1 = put(s3, bucket, "faces/7/held.jpg", b"held-1")
    put(s3, bucket, "faces/7/held.jpg", b"held-2")  # unlocked newer version
    s3.put_object_legal_hold(
        Bucket=bucket, Key="faces/7/held.jpg", VersionId=held_v1, LegalHold={"Status": "ON"}
    )
    put(s3, bucket, "faces/7/kept.jpg", b"kept", ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until)
    put(s3, bucket, "faces/7/expired.jpg", b"expired", ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=datetime(2020, 1, 1, tzinfo=UTC))
    put(s3, bucket, "faces/7/plain.jpg", b"plain")
    put(s3, bucket, "faces/70/plain.jpg", b"someone else")
    before = {k: v for k, v in snapshot(s3, bucket).items() if k[0].startswith("faces/70/")}
    spec = {"category": "biometric", "ownership": [{"key_template": "faces/{user_id}/"}]}
    connector = ObjectsConnector("faces", system({bucket: spec}), client=s3)
    who = [subject("r7", user_id="7")]

    part = connector.erase(who, None, NO_KEYS)["r7"].parts[bucket]

    assert (part.found, part.deleted, part.retained) == (4, 2, 2)
    assert part.retain_reasons == sorted(
        ["legal hold", f"retention (COMPLIANCE) until {until.date().isoformat()}"]
    )
    left = snapshot(s3, bucket)
    held = {vid: body for (key, vid), (body, _) in left.items() if key == "faces/7/held.jpg"}
    assert held[held_v1] == b"held-1"  # the held version stays ...
    assert sum(1 for body in held.values() if body is not None) == 1  # ... the other went
    with pytest.raises(s3.exceptions.ClientError):  # and it is no longer served
        s3.get_object(Bucket=bucket, Key="faces/7/held.jpg")
    assert not [k for k in left if k[0] in ("faces/7/plain.jpg", "faces/7/expired.jpg")]
    assert {k: v for k, v in left.items() if k[0].startswith("faces/70/")} == before

    check = connector.verify(who, None)["r7"].parts[bucket]
    assert (check.found, check.retained, check.remaining) == (2, 2, 0)
    again = connector.erase(who, None, NO_KEYS)["r7"].parts[bucket]
    assert (again.found, again.deleted, again.retained) == (2, 0, 2)
    assert snapshot(s3, bucket) == left


def test_bucket_that_retains_deletes_nothing(s3: Any) -> None:
    bucket = new_bucket(s3)
    put(s3, bucket, "uploads/2/invoice.pdf")
    before = snapshot(s3, bucket)
    spec = prefix_bucket(action="retain", reason="invoices: PRC tax law, 3 years")
    connector = ObjectsConnector("media", system({bucket: spec}), client=s3)
    who = [subject("r2", user_id="2")]
    part = connector.erase(who, None, NO_KEYS)["r2"].parts[bucket]
    assert (part.found, part.deleted, part.retained) == (1, 0, 1)
    assert part.retain_reasons == ["invoices: PRC tax law, 3 years"]
    assert snapshot(s3, bucket) == before
    check = connector.verify(who, None)["r2"].parts[bucket]
    assert (check.retained, check.remaining) == (1, 0)


# -- other ways to own an object ------------------------------------------------------------
def test_tag_ownership_lists_the_prefix_once_for_the_batch(s3: Any) -> None:
    bucket = new_bucket(s3, versioned=True)
    put(s3, bucket, "shared/a.jpg", Tagging="owner=Alice%40Example.COM")
    put(s3, bucket, "shared/b.jpg", Tagging="owner=bob%40example.com")
    put(s3, bucket, "shared/c.jpg", Tagging="owner=carol%40example.com")
    put(s3, bucket, "shared/d.jpg", Tagging="other=alice%40example.com")
    put(s3, bucket, "shared/e.jpg")
    put(s3, bucket, "outside/f.jpg", Tagging="owner=alice%40example.com")
    # Tagged in an older version only: still the subject's object.
    put(s3, bucket, "shared/g.jpg", Tagging="owner=bob%40example.com")
    put(s3, bucket, "shared/g.jpg")
    keep = {"shared/c.jpg", "shared/d.jpg", "shared/e.jpg", "outside/f.jpg"}
    before = {k: v for k, v in snapshot(s3, bucket).items() if k[0] in keep}
    spec = {"category": "media", "ownership": [
        {"tag": "owner", "tag_identity": "email", "tag_prefix": "shared/"}]}
    connector = ObjectsConnector("media", system({bucket: spec}), client=s3)
    who = [subject("ra", email="alice@example.com"), subject("rb", email="BOB@example.com")]
    listings = count_calls(s3, "ListObjectVersions")

    outcomes = connector.erase(who, None, NO_KEYS)

    assert len(listings) == 1 and listings[0]["Prefix"] == "shared/"
    assert outcomes["ra"].parts[bucket].deleted == 1
    assert outcomes["rb"].parts[bucket].deleted == 2
    assert snapshot(s3, bucket) == before
    assert all(o.parts[bucket].remaining == 0 for o in connector.verify(who, None).values())


def test_keys_from_a_sql_column(s3: Any) -> None:
    bucket = new_bucket(s3)
    for key in ("media/abc.jpg", "media/def.jpg", "media/abc.jpg.thumb"):
        put(s3, bucket, key)
    spec = {"category": "media", "ownership": [
        {"keys_from": {"system": "userdb", "table": "uploads", "column": "s3_key"}}]}
    asked: list[tuple[list[str], str]] = []

    def keys_from(subjects: Any, ref: Any) -> dict[str, list[str]]:
        asked.append(([s.request_id for s in subjects], f"{ref.system}.{ref.table}.{ref.column}"))
        return {"r1": ["media/abc.jpg", "media/missing.jpg"], "r2": []}

    with pytest.raises(ObjectsConfigError, match="keys_from"):
        ObjectsConnector("media", system({bucket: spec}), client=s3)
    connector = ObjectsConnector("media", system({bucket: spec}), client=s3, keys_from=keys_from)
    who = [subject("r1", user_id="1"), subject("r2", user_id="2")]

    outcomes = connector.erase(who, None, NO_KEYS)

    assert asked == [(["r1", "r2"], "userdb.uploads.s3_key")]
    assert (outcomes["r1"].parts[bucket].found, outcomes["r1"].parts[bucket].deleted) == (1, 1)
    assert outcomes["r2"].parts[bucket].found == 0
    left = {k["Key"] for k in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert left == {"media/def.jpg", "media/abc.jpg.thumb"}


def test_exact_key_template_matches_exactly(s3: Any) -> None:
    bucket = new_bucket(s3)
    for key in ("avatars/9.png", "avatars/9.png.bak", "avatars/99.png"):
        put(s3, bucket, key)
    connector = ObjectsConnector("m", system({bucket: prefix_bucket("avatars/{user_id}.png")}),
                                 client=s3)
    part = connector.erase([subject("r9", user_id="9")], None, NO_KEYS)["r9"].parts[bucket]
    assert (part.found, part.deleted) == (1, 1)
    left = {k["Key"] for k in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert left == {"avatars/9.png.bak", "avatars/99.png"}


def test_subject_without_the_templates_identity_has_no_objects(s3: Any) -> None:
    bucket = new_bucket(s3)
    put(s3, bucket, "uploads/1/a.jpg")
    connector = ObjectsConnector("m", system({bucket: prefix_bucket()}), client=s3)
    part = connector.erase([subject("r", email="x@example.com")], None, NO_KEYS)["r"]
    assert part.parts[bucket].found == 0
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


# -- unsafe identities -----------------------------------------------------------------------
@pytest.mark.parametrize("value", ["../", "..", "a/b", "../2", "a\\b", "", "x\x7fy", "."])
def test_identities_that_would_escape_their_prefix_are_refused(s3: Any, value: str) -> None:
    bucket = new_bucket(s3)
    put(s3, bucket, "uploads/2/a.jpg")
    put(s3, bucket, "uploads/1/a.jpg")
    before = snapshot(s3, bucket)
    connector = ObjectsConnector("m", system({bucket: prefix_bucket()}), client=s3)
    # Built without normalization: the connector must not rely on it having happened.
    bad = Subject.model_construct(
        request_id="bad",
        identities=(Identity.model_construct(type=IdentityType.USER_ID, value=value),),
    )
    batch = [subject("good", user_id="1"), bad]  # nothing happens for the batch
    for call in (
        lambda: connector.erase(batch, None, NO_KEYS),
        lambda: connector.verify(batch, None),
        lambda: connector.collect(batch, None),
    ):
        with pytest.raises(UnsafeKey) as caught:
            call()
        message = str(caught.value)
        assert "uploads/{user_id}/" in message and "user_id" in message
        if value not in ("", "."):
            assert value not in message
    assert snapshot(s3, bucket) == before


def test_templates_fill_every_combination() -> None:
    who = Subject(request_id="r", identities=(
        Identity(type=IdentityType.USER_ID, value="7"),
        Identity(type=IdentityType.DEVICE_ID, value="d1"),
        Identity(type=IdentityType.DEVICE_ID, value="d2"),
    ))
    assert fill_template("{user_id}/{device_id}/", who) == ["7/d1/", "7/d2/"]
    assert fill_template("p/{email}/", who) == []
    with pytest.raises(ObjectsConfigError, match="format spec"):
        ObjectsConnector("m", system({"b-1": prefix_bucket("u/{user_id!r}/")}), client=object())


# -- errors -----------------------------------------------------------------------------------
class _RefusingClient:
    """A client whose delete_objects reports a per-key error for every object."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        return {"Errors": [{"Key": o["Key"], "Code": "AccessDenied", "Message": "no"}
                           for o in Delete["Objects"]]}


def test_refused_deletes_raise_naming_bucket_and_count_not_keys(s3: Any) -> None:
    bucket = new_bucket(s3)
    put(s3, bucket, "uploads/alice@example.com/a.jpg")
    put(s3, bucket, "uploads/alice@example.com/b.jpg")
    connector = ObjectsConnector(
        "m", system({bucket: prefix_bucket("uploads/{email}/")}), client=_RefusingClient(s3)
    )
    with pytest.raises(ObjectsError) as caught:
        connector.erase([subject("r", email="alice@example.com")], None, NO_KEYS)
    message = str(caught.value)
    assert bucket in message and "2 of 2" in message and "AccessDenied" in message
    assert "alice" not in message and "a.jpg" not in message


def test_store_errors_name_bucket_and_code_only(s3: Any) -> None:
    connector = ObjectsConnector("m", system({"no-such-bucket": prefix_bucket()}), client=s3)
    with pytest.raises(ObjectsError, match=r"no-such-bucket: get_bucket_versioning failed: "
                                           r"NoSuchBucket") as caught:
        connector.erase([subject("r", user_id="4")], None, NO_KEYS)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_endpoint_from_the_environment(
    s3: Any, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = new_bucket(s3)
    put(s3, bucket, "uploads/3/a.jpg")
    spec = system({bucket: prefix_bucket()}, endpoint_url_env="TEST_S3_ENDPOINT")
    monkeypatch.delenv("TEST_S3_ENDPOINT", raising=False)
    with pytest.raises(ObjectsConfigError, match="TEST_S3_ENDPOINT is not set"):
        ObjectsConnector("m", spec)
    monkeypatch.setenv("TEST_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    connector = ObjectsConnector("m", spec)
    part = connector.erase([subject("r", user_id="3")], None, NO_KEYS)["r"].parts[bucket]
    assert part.deleted == 1
    connector.dispose()


# -- access -----------------------------------------------------------------------------------
def test_collect_presigned_urls_fetch_the_bytes(s3: Any) -> None:
    bucket = new_bucket(s3, versioned=True)
    put(s3, bucket, "uploads/4/a.jpg", b"first")
    put(s3, bucket, "uploads/4/a.jpg", b"second")
    put(s3, bucket, "uploads/4/b.mp4", b"\x00video\xff")
    put(s3, bucket, "uploads/4/deleted.jpg", b"x")
    s3.delete_object(Bucket=bucket, Key="uploads/4/deleted.jpg")
    put(s3, bucket, "uploads/40/c.jpg", b"not theirs")
    spec = prefix_bucket(collect="presigned", presign_seconds=600)
    connector = ObjectsConnector("m", system({bucket: spec}), client=s3)

    records = connector.collect([subject("r", user_id="4")], None)["r"][bucket]

    assert [r["key"] for r in records] == ["uploads/4/a.jpg", "uploads/4/b.mp4"]
    fetched = [httpx.get(r["url"]).content for r in records]
    assert fetched == [b"second", b"\x00video\xff"]
    first = records[0]
    assert first["size"] == len(b"second")
    assert first["etag"] == hashlib.md5(b"second").hexdigest()  # S3's ETag of a single-part upload
    assert datetime.fromisoformat(first["last_modified"]).tzinfo is not None
    head = s3.head_object(Bucket=bucket, Key="uploads/4/a.jpg")
    assert first["version_id"] == head["VersionId"]


def test_collect_bytes_and_metadata(s3: Any) -> None:
    data, meta = new_bucket(s3), new_bucket(s3)
    put(s3, data, "uploads/6/a.bin", bytes(range(256)))
    put(s3, meta, "uploads/6/a.bin", b"meta")
    connector = ObjectsConnector("m", system({
        data: prefix_bucket(collect="bytes"), meta: prefix_bucket(collect="metadata")
    }), client=s3)
    records = connector.collect([subject("r", user_id="6"), subject("s", user_id="7")], None)
    assert base64.b64decode(records["r"][data][0]["content_base64"]) == bytes(range(256))
    assert set(records["r"][meta][0]) == {"key", "size", "last_modified", "etag", "version_id"}
    assert records["r"][meta][0]["version_id"] is None
    assert records["s"] == {}


# -- scope ------------------------------------------------------------------------------------
def test_scope_leaves_buckets_of_other_categories_alone(s3: Any) -> None:
    media, faces = new_bucket(s3), new_bucket(s3)
    put(s3, media, "uploads/1/a.jpg")
    put(s3, faces, "faces/1/a.jpg")
    before = snapshot(s3, faces)
    connector = ObjectsConnector("m", system({
        media: prefix_bucket(),
        faces: {"category": "biometric", "ownership": [{"key_template": "faces/{user_id}/"}]},
    }), client=s3)
    who = [subject("r", user_id="1")]
    outcome = connector.erase(who, frozenset({"media"}), NO_KEYS)["r"]
    assert set(outcome.parts) == {media}
    assert outcome.parts[media].deleted == 1
    assert snapshot(s3, faces) == before
    assert set(connector.collect(who, frozenset({"biometric"}))["r"]) == {faces}


# -- volume (in-process mock: only the number of calls matters) -----------------------------
def test_batches_of_more_than_a_thousand_keys() -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        bucket = new_bucket(s3)
        for i in range(1_100):
            put(s3, bucket, f"uploads/1/{i:05d}.jpg", b"x")
        for i in range(1_100, 1_150):
            put(s3, bucket, f"uploads/2/{i:05d}.jpg", b"x")
        put(s3, bucket, "uploads/3/a.jpg", b"y")
        connector = ObjectsConnector("m", system({bucket: prefix_bucket()}), client=s3)
        deletes = count_calls(s3, "DeleteObjects")
        listings = count_calls(s3, "ListObjectsV2")
        who = [subject("r1", user_id="1"), subject("r2", user_id="2")]

        outcomes = connector.erase(who, None, NO_KEYS)

        assert [len(call["Delete"]["Objects"]) for call in deletes] == [1000, 150]
        assert all(call["Delete"]["Quiet"] for call in deletes)
        # One listing per prefix (uploads/1/ takes two pages of 1,000).
        firsts = [c["Prefix"] for c in listings if "ContinuationToken" not in c]
        assert sorted(firsts) == ["uploads/1/", "uploads/2/"] and len(listings) == 3
        assert outcomes["r1"].parts[bucket].deleted == 1_100
        assert outcomes["r2"].parts[bucket].deleted == 50
        left = s3.list_objects_v2(Bucket=bucket)
        assert [o["Key"] for o in left["Contents"]] == ["uploads/3/a.jpg"]


USER_IDS = ["1", "12", "123", "2", "21", "3"]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[bool, dict[str, list[tuple[str, int]]], set[str]]:
    versioned = draw(st.booleans())
    objects = {
        uid: draw(st.lists(st.tuples(st.sampled_from(["a", "b/c", "d.jpg", ""]),
                                     st.integers(1, 3)), max_size=3, unique_by=lambda t: t[0]))
        for uid in draw(st.sets(st.sampled_from(USER_IDS), min_size=1))
    }
    erased = draw(st.sets(st.sampled_from(USER_IDS)))
    return versioned, objects, erased


def test_precision_property() -> None:
    """Random users (ids that are prefixes of one another), objects and versions; a random
    set of subjects is erased: every other object is byte-identical afterwards and nothing of
    the subjects is left."""
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")

        @settings(max_examples=40, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(worlds())
        def check(world: tuple[bool, dict[str, list[tuple[str, int]]], set[str]]) -> None:
            versioned, objects, erased = world
            bucket = new_bucket(s3, versioned=versioned)
            for uid, items in objects.items():
                for name, versions in items:
                    key = f"uploads/{uid}/{name}" if name else f"uploads/{uid}"
                    for v in range(versions):
                        put(s3, bucket, key, f"{key}#{v}".encode())
            before = snapshot(s3, bucket)
            connector = ObjectsConnector("m", system({bucket: prefix_bucket()}), client=s3)
            who = [subject(f"r{uid}", user_id=uid) for uid in sorted(erased)]

            connector.erase(who, None, NO_KEYS)

            after = snapshot(s3, bucket)
            mine = {k for k in before if any(k[0].startswith(f"uploads/{u}/") for u in erased)}
            assert after == {k: v for k, v in before.items() if k not in mine}
            assert all(o.total("remaining") == 0 for o in connector.verify(who, None).values())

        check()


# -- the Wishe demo world ---------------------------------------------------------------------
def test_wishe_datamap_fragment_validates() -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "wishe" / "datamap.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["systems"]["media"] = wishe_objects.DATAMAP_SYSTEM
    datamap = parse_datamap(doc, str(path))
    media = datamap.systems["media"]
    assert isinstance(media, ObjectsSystem)
    assert media.categories == {"media", "biometric"}


def test_wishe_objects_populate_and_erase_a_demo_subject(s3: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wishe.db'}"
    world = build_world(url, users=30)
    counts = wishe_objects.populate(s3, url)
    assert counts["upload_objects"] == world.counts["uploads"]
    assert counts["face_objects"] == world.counts["face_templates"]
    assert counts["upload_versions"] > counts["upload_objects"]
    assert counts["legal_holds"] == 1
    assert wishe_objects.populate(s3, url) == counts  # rebuilt, not appended to

    spec = ObjectsSystem.model_validate(
        {**wishe_objects.DATAMAP_SYSTEM, "endpoint_url_env": None}
    )
    connector = ObjectsConnector("media", spec, client=s3)
    demo = world.subjects[0]
    who = [subject("r", user_id=str(demo.user_id))]
    collected = connector.collect(who, None)["r"]
    assert collected["wishe-faces"][0]["content_base64"]
    outcome = connector.erase(who, None, NO_KEYS)["r"]
    assert outcome.total("found") >= 2 and outcome.total("retained") == 0
    assert connector.verify(who, None)["r"].total("remaining") == 0
