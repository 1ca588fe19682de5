"""The access package, as a requester receives it: a link and a key (from the support
outbox), an encrypted zip that opens with that key, checksums that verify, and in it the
subject's records and objects and nothing of anyone else."""

from __future__ import annotations

import contextlib
import io
import json
import random
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsrflow.delivery import PackageSettings
from dsrflow.errors import StepFailed
from dsrflow.exports import exported_systems
from dsrflow.intake import submit
from dsrflow.ledger import RequestRecord, StepRecord
from dsrflow.model import Regime, RequestType, Status
from dsrflow.packages import (
    PackageContents,
    PackageError,
    StoredObject,
    build_package,
    check_package,
    new_package_key,
    seal,
    unseal,
)
from pipeline import closing, deliverables, steps
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket

AT = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def world(tmp_path: Path) -> tuple[sqlworld.World, str]:
    return sqlworld.sqlite_world(tmp_path, 5, 12)


@pytest.fixture
def uploads(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
            world: tuple[sqlworld.World, str]) -> str:
    """A bucket of every user's uploads: `uploads/<user id>/<n>.jpg`, user 3's second file
    larger than the package carries inline."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = f"uploads-{random.Random().getrandbits(40):x}"
    s3.create_bucket(Bucket=bucket)
    for user in world[0].rows["users"]:
        uid = user["id"]
        for n in (1, 2):
            size = 4096 if (uid, n) == (3, 2) else 64
            s3.put_object(Bucket=bucket, Key=f"uploads/{uid}/{n}.jpg",
                          Body=(f"photo {n} of user {uid};".encode() * size)[:size])
    return bucket


def _runtime(tmp_path: Path, url: str, s3_endpoint: str, bucket: str,
             packages: PackageSettings) -> Runtime:
    doc: dict[str, Any] = {**sqlworld.DATAMAP_DOC}
    doc["disclosures"] = {"media": {"purposes": ["photos you upload"],
                                    "retention": "until you delete them"}}
    doc["systems"] = {
        "db": {**doc["systems"]["db"], "url": url},
        "media": {"kind": "objects", "endpoint_url": s3_endpoint, "buckets": {bucket: {
            "category": "media", "action": "delete",
            "ownership": [{"key_template": "uploads/{user_id}/"}]}}},
    }
    rt = make_runtime(tmp_path, doc)
    rt.settings.packages = packages
    return rt


def _access(rt: Runtime, uid: int, world: sqlworld.World) -> str:
    email = str(world.user(uid)["email"])
    rid = submit(rt.ledger, rt.datamap,
                 ticket(f"T-{uid}", "access", [{"type": "email", "value": email}])).request_id
    gate = steps.open_requests(rt, [rid], owner="test-run")
    steps.resolve_identities(rt, gate.ready)
    for system in ("media", "db"):
        steps.apply_to_system(rt, system, [rid])
    return rid


def _receive(rt: Runtime, rid: str) -> tuple[StepRecord, zipfile.ZipFile, dict[str, Any]]:
    """What the requester does: read the outbox (link + key), download, open."""
    step = next(s for s in rt.ledger.steps([rid]) if s.system == deliverables.PACKAGE)
    assert step.status == "succeeded", step.error
    outbox = json.loads(Path(step.details["key_handed_to"].removeprefix("outbox:"))
                        .read_text())
    blob = httpx.get(outbox["link"]).raise_for_status().content if outbox["link"].startswith(
        "http") else Path(outbox["link"].removeprefix("file://")).read_bytes()
    package = unseal(blob, outbox["key"].encode())
    manifest = check_package(package)
    return step, zipfile.ZipFile(io.BytesIO(package)), manifest | {"_outbox": outbox}


def test_an_access_package_holds_the_subject_and_nobody_else(
    tmp_path: Path, world: tuple[sqlworld.World, str], s3_endpoint: str, uploads: str,
) -> None:
    w, url = world
    packages = PackageSettings(store="s3", bucket=uploads, prefix="packages/",
                               endpoint_url=s3_endpoint, inline_object_bytes=1024)
    rt = _runtime(tmp_path, url, s3_endpoint, uploads, packages)
    rid = _access(rt, 3, w)
    assert deliverables.produce(rt, [rid]) == {rid: deliverables.PACKAGE}
    step, zf, manifest = _receive(rt, rid)

    # The subject's rows, table by table, as JSON and CSV; exactly the oracle's set.
    for table, owners in w.owners.items():
        mine = sorted(str(k) for k, who in owners.items() if 3 in who)
        path = f"data/db/{table}.json"
        if not mine:
            assert path not in zf.namelist()
            continue
        rows = json.loads(zf.read(path))
        assert len(rows) == len(mine), table
        assert zf.read(f"data/db/{table}.csv").count(b"\n") == len(rows) + 1
    # Their small photo travels inside; the large one is an expiring link that works.
    carried = [f for f in manifest["files"] if "object_key" in f]
    assert [f["object_key"] for f in carried] == ["uploads/3/1.jpg"]
    assert zf.read(carried[0]["path"]).startswith(b"photo 1 of user 3;")
    [link] = manifest["object_links"]
    assert link["key"] == "uploads/3/2.jpg"
    assert httpx.get(link["url"]).raise_for_status().content.startswith(b"photo 2 of user 3;")
    # Nobody else's identity or photo is anywhere in it.
    everything = b"".join(zf.read(n) for n in zf.namelist())
    for other in w.rows["users"]:
        if other["id"] != 3:
            assert str(other["email"]).encode() not in everything
            assert sqlworld.phone_for(other["id"]).encode() not in everything
            assert f"of user {other['id']};".encode() not in everything
    assert str(w.user(3)["email"]).encode() in everything

    # The manifest says what, why, how long and to whom, and index.html a person can read.
    media = next(c for c in manifest["categories"] if c["category"] == "media")
    assert media["purposes"] == ["photos you upload"]
    assert {s["system"] for s in manifest["sources"]} == {"db", "media"}
    assert "The personal data we hold about you" in zf.read("index.html").decode()

    # The collected records that waited for the package are gone: it is the copy now.
    assert exported_systems(rt.settings.exports_path, rid) == []

    # The ledger knows where the package and the key went, never the key.
    details = step.details
    assert details["location"] == f"s3://{uploads}/packages/{rid}.zip.fernet"
    assert details["key_id"] == manifest["_outbox"]["key_id"]
    key = manifest["_outbox"]["key"].encode()
    assert key not in (tmp_path / "ledger.db").read_bytes()
    assert key not in json.dumps(rt.ledger.steps([rid]), default=str).encode()
    rt.close()


def test_a_package_carries_objects_up_to_its_budget_and_links_the_rest(
    tmp_path: Path, world: tuple[sqlworld.World, str], s3_endpoint: str, uploads: str,
) -> None:
    """Packages are built in memory: past `inline_total_bytes`, objects travel as links
    however small each one is."""
    w, url = world
    packages = PackageSettings(store="local", inline_total_bytes=100)
    rt = _runtime(tmp_path, url, s3_endpoint, uploads, packages)
    rid = _access(rt, 5, w)
    deliverables.produce(rt, [rid])
    _, _, manifest = _receive(rt, rid)
    carried = [f["object_key"] for f in manifest["files"] if "object_key" in f]
    linked = [link["key"] for link in manifest["object_links"]]
    assert (carried, linked) == (["uploads/5/1.jpg"], ["uploads/5/2.jpg"])  # 64 + 64 > 100
    rt.close()


def test_a_package_is_made_once_and_the_wrong_key_does_not_open_it(
    tmp_path: Path, world: tuple[sqlworld.World, str], s3_endpoint: str, uploads: str,
) -> None:
    w, url = world
    rt = _runtime(tmp_path, url, s3_endpoint, uploads, PackageSettings(store="local"))
    rid = _access(rt, 5, w)
    deliverables.produce(rt, [rid])
    step, _, manifest = _receive(rt, rid)
    assert step.details["location"].startswith(str(tmp_path / ".dsrflow" / "packages"))

    # A rerun (the flow retried, the partner check closed it) makes no second package.
    assert deliverables.produce(rt, [rid]) == {}
    blob = Path(step.details["location"]).read_bytes()
    with pytest.raises(PackageError, match="key does not open"):
        unseal(blob, new_package_key())

    # Once the support team has sent the key, the outbox copy is gone and the ledger says
    # how it went out.
    outbox = Path(step.details["key_handed_to"].removeprefix("outbox:"))
    deliverables.handed_over(rt, rid, channel="SMS to the account phone", by="agent-7")
    assert not outbox.exists()
    [after] = [s for s in rt.ledger.steps([rid]) if s.system == deliverables.PACKAGE]
    assert after.details["key_handed_to"] == "SMS to the account phone"
    assert after.details["key_id"] == manifest["_outbox"]["key_id"]
    with pytest.raises(LookupError):
        deliverables.handed_over(rt, "no-such-request", channel="x", by="y")
    rt.close()


def test_an_unsent_key_is_dropped_when_its_link_expires(
    tmp_path: Path, world: tuple[sqlworld.World, str], s3_endpoint: str, uploads: str,
) -> None:
    w, url = world
    rt = _runtime(tmp_path, url, s3_endpoint, uploads, PackageSettings(store="local"))
    rid = _access(rt, 4, w)
    deliverables.produce(rt, [rid])
    step, _, _ = _receive(rt, rid)
    outbox = Path(step.details["key_handed_to"].removeprefix("outbox:"))
    package = Path(step.details["location"])
    made = datetime.now(UTC)

    # While the link works, nothing goes.
    assert deliverables.expire(rt, made + timedelta(days=4)) == ([], [])
    assert outbox.exists() and package.exists()

    # After, the key and the package go, and the ledger says the key never went out.
    assert deliverables.expire(rt, made + timedelta(days=5, minutes=1)) == ([rid], [package])
    assert not outbox.exists() and not package.exists()
    [after] = [s for s in rt.ledger.steps([rid]) if s.system == deliverables.PACKAGE]
    assert after.details["key_handed_to"] == "nobody: the link expired first"
    rt.close()


def test_the_scheduled_flow_expires_what_is_due(
    tmp_path: Path, world: tuple[sqlworld.World, str], s3_endpoint: str, uploads: str,
    prefect_server: list[Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.packages import expire_packages

    w, url = world
    rt = _runtime(tmp_path, url, s3_endpoint, uploads, PackageSettings(store="local"))
    previous = set_runtime(rt)
    try:
        rid = _access(rt, 6, w)
        deliverables.produce(rt, [rid])
        assert expire_packages() == {"keys_dropped": 0, "packages_deleted": 0}
        later = datetime.now(UTC) + timedelta(days=6)
        monkeypatch.setattr(deliverables, "now", lambda: later)
        assert expire_packages() == {"keys_dropped": 1, "packages_deleted": 1}
    finally:
        set_runtime(previous)
        rt.close()


def test_no_package_of_half_the_data(
    tmp_path: Path, world: tuple[sqlworld.World, str], s3_endpoint: str, uploads: str,
) -> None:
    """A system that failed to collect keeps the package back; the request closes partial
    and a rerun makes the package once every system has answered."""
    w, url = world
    rt = _runtime(tmp_path, url, s3_endpoint, "no-such-bucket", PackageSettings(store="local"))
    email = str(w.user(2)["email"])
    rid = submit(rt.ledger, rt.datamap,
                 ticket("T-2", "access", [{"type": "email", "value": email}])).request_id
    steps.open_requests(rt, [rid], owner="test-run")
    for system in ("media", "db"):
        # The media system fails (its bucket does not exist), after recording the failure.
        with contextlib.suppress(StepFailed):
            steps.apply_to_system(rt, system, [rid])
    assert deliverables.produce(rt, [rid]) == {}
    assert closing.close_requests(rt, [rid]).statuses == {rid: Status.PARTIALLY_COMPLETED}
    rt.close()


def _contents(records: dict[str, Any], objects: dict[str, bytes] | None = None
              ) -> PackageContents:
    record = RequestRecord(
        id="r-1", ticket_id="T-1", type=RequestType.ACCESS, regime=Regime.PIPL, channel="app",
        scope=None, status=Status.IN_PROGRESS, reason=None, received_at=AT, verified_at=AT,
        due_at=None, deadline_error=None, completed_at=None, datamap_version="v1",
        policy_version="p1",
    )
    doc: dict[str, Any] = {**sqlworld.DATAMAP_DOC}
    doc["systems"] = {**doc["systems"], "media": {
        "kind": "objects", "buckets": {"bkt": {"category": "media", "action": "delete",
                                             "ownership": [{"key_template": "u/{user_id}/"}]}}},
        "applogs": {"kind": "logs", "sources": {"app": {
            "path": "logs/*.log", "format": "text", "identities": ["email", "phone"]}}}}
    from dsrflow.datamap import parse_datamap

    def fetch(obj: StoredObject) -> bytes | None:
        return (objects or {}).get(obj.key)

    return PackageContents(record, parse_datamap(doc), records, AT, fetch, None,
                           frozenset({"a@example.com", "+8613900139000"}), "CN")


def test_tampering_is_caught_file_by_file() -> None:
    package = build_package(_contents({"db": {"users": [{"id": 1, "email": "a@example.com"}]}}))
    check_package(package)

    def rewrite(change: dict[str, bytes], drop: str | None = None) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(package)) as src, zipfile.ZipFile(out, "w") as dst:
            for name in src.namelist():
                if name != drop:
                    dst.writestr(name, change.get(name, src.read(name)))
            for name, data in change.items():
                if name not in src.namelist():
                    dst.writestr(name, data)
        return out.getvalue()

    with pytest.raises(PackageError, match=r"users\.json does not match"):
        check_package(rewrite({"data/db/users.json": b'[{"id": 2}]'}))
    with pytest.raises(PackageError, match=r"users\.csv is in the manifest but not"):
        check_package(rewrite({}, drop="data/db/users.csv"))
    with pytest.raises(PackageError, match=r"extra\.txt is in the package but not"):
        check_package(rewrite({"extra.txt": b"x"}))
    # Sealed, one flipped byte and it does not open at all.
    key = new_package_key()
    sealed = bytearray(seal(package, key))
    sealed[40] ^= 1
    with pytest.raises(PackageError):
        unseal(bytes(sealed), key)


def test_log_lines_keep_the_subject_and_withhold_everyone_else() -> None:
    """A log line about the subject can name other people; the package gives the subject
    their own data and says how much of others' it withheld. Table rows stay as they are:
    a column says whose value it is."""
    line = "a@example.com (139 0013 9000) invited b@example.com, +86 138 0013 8000"
    package = build_package(_contents({
        "applogs": {"app": [{"file": "app.log", "line": 7, "text": line}]},
        "db": {"contacts": [{"contact_phone": "13800138000"}]},
    }))
    manifest = check_package(package)
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        [row] = json.loads(zf.read("data/applogs/app.json"))
        assert row["text"] == ("a@example.com (139 0013 9000) invited [email of another "
                               "person withheld], [phone number of another person withheld]")
        assert row["line"] == 7
        assert b"b@example.com" not in zf.read("data/applogs/app.csv")
        assert json.loads(zf.read("data/db/contacts.json")) == [{"contact_phone": "13800138000"}]
        assert "2 mentions of other people" in zf.read("index.html").decode()
    withheld = {s["system"]: s["others_withheld"] for s in manifest["sources"]}
    assert withheld == {"applogs": 2, "db": 0}


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_no_object_key_can_escape_the_package_folder(key: str) -> None:
    """Keys come from other people's systems: `../../etc/passwd` or an absolute path must
    land inside `objects/`, and the same bytes come out."""
    package = build_package(_contents(
        {"media": {"bkt": [{"key": key, "size": 3, "version_id": None}]}}, {key: b"abc"}))
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        [entry] = [n for n in zf.namelist() if n.startswith("objects/")]
        parts = entry.split("/")
        assert parts[:3] == ["objects", "media", "bkt"] and len(parts) == 4
        assert ".." not in parts and not entry.startswith("/") and "\\" not in entry
        assert zf.read(entry) == b"abc"
    assert check_package(package)["files"]


def test_the_index_escapes_whatever_the_package_holds() -> None:
    """A key, a partner's link or a recipient's name is shown as text, never as markup: the
    requester opens index.html in a browser."""
    from dsrflow.packages import _index

    hostile = '<script>alert("x")</script>'
    page = _index({
        "request": {"ticket_id": "T-1", "type": "access", "received_at": "2026-11-20",
                    "policy_version": "3.2"},
        "generated_at": "2026-11-21",
        "categories": [{"category": "contact", "purposes": [hostile], "retention": "1 year",
                        "sensitive": False}],
        "sources": [{"system": "db", "part": "users", "categories": ["contact"], "records": 1,
                     "files": ["db/users.csv"], "others_withheld": 2, "sensitive": []}],
        "files": [{"path": "objects/a.jpg", "object_key": hostile, "bytes": 3}],
        "object_links": [],
        "recipients": [{"name": hostile, "role": "processor", "categories": ["contact"],
                        "purpose": None}],
        "partner_results": [{"partner": "adnet", "results_url": 'https://x.example/"><b>',
                             "results_count": 4}, {"partner": "courier"}],
    })
    assert "<script>" not in page and page.count("&lt;script&gt;") == 3
    assert 'href="https://x.example/&#34;&gt;&lt;b&gt;"' in page
    assert "2 mentions of other people" in page and "(4 records)" in page
    assert "courier: no results link" in page and "<td>-</td>" in page  # no purpose given
