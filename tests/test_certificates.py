"""Signed erasure certificates, from a real erasure: the SQL connector against the sqlworld
(SQLite and PostgreSQL, the ledger beside it) and a manual partner, driven through the plain
step functions. The certificate says what the ledger says, holds no identity, and any change
to it, or a signature by any key but the trusted one, is caught."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import random
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import pipeline.steps
from connectors.sql import SqlConnector
from dsrflow.certificates import (
    FORMAT,
    CertificateInvalid,
    build_certificate,
    canonical_bytes,
    issue_certificate,
    read_certificate,
    sign_certificate,
    verify_certificate,
    write_certificate,
)
from dsrflow.crypto import encode_key, new_key
from dsrflow.errors import StepFailed
from dsrflow.intake import submit
from dsrflow.model import Status, StepAction, StepStatus
from dsrflow.settings import ConfigError, load_settings, read_key_file, write_key_file
from dsrflow.signing import (
    decode_signing_key,
    encode_public_key,
    encode_signing_key,
    key_id,
    new_signing_key,
)
from pipeline import partners
from pipeline.deliverables import CERTIFICATE
from pipeline.runtime import Runtime, set_runtime
from pipeline.steps import apply_to_system, open_requests, resolve_identities, verify_system
from tests import sqlworld
from tests.helpers import flat, invoke, make_runtime, ticket

RUN = {"flow_run_id": str(uuid.UUID(int=1)), "task_run_id": str(uuid.UUID(int=2))}
ISSUED = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
CONFIRMED = datetime(2026, 11, 21, 16, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DSRFLOW_* variable of the surrounding shell leaks into settings or the CLI."""
    for name in list(os.environ):
        if name.startswith("DSRFLOW_"):
            monkeypatch.delenv(name)


@dataclass
class Erasure:
    rt: Runtime
    world: sqlworld.World
    uid: int
    request_id: str
    url: str


def _datamap_doc(url: str) -> dict[str, Any]:
    doc: dict[str, Any] = {**sqlworld.DATAMAP_DOC}
    doc["systems"] = {
        "db": {**doc["systems"]["db"], "url": url},
        "courier": {
            "kind": "partner",
            "protocol": "manual",
            "categories": ["contact"],
            "identities": [{"type": "phone"}],
            "contact": "privacy@courier.example (portal)",
        },
    }
    return doc


def _subject_with_holds(world: sqlworld.World) -> int:
    """A user with orders (kept for tax law) and posts (deleted): both kinds of outcome."""
    for user in world.rows["users"]:
        uid = int(user["id"])
        owns = {t for t in ("orders", "posts") for r in world.rows.get(t, [])
                if r["user_id"] == uid}
        if owns == {"orders", "posts"}:
            return uid
    raise AssertionError("the seed gives no user with orders and posts")


def _beside(db_url: str) -> str | None:
    """The ledger in the world's own PostgreSQL database (as a small install might keep
    it); SQLite has one writer per file, so there it gets a file of its own."""
    return db_url if db_url.startswith("postgresql") else None


def _start(tmp_path: Path, url: str, ledger_url: str | None = None) -> Erasure:
    engine = sa.create_engine(url)
    world = sqlworld.generate(random.Random(5), 6)
    # Loaded before the ledger migrates: on PostgreSQL both share one database, and loading
    # resets the schema.
    sqlworld.load(engine, world)
    engine.dispose()
    uid = _subject_with_holds(world)
    rt = make_runtime(tmp_path, _datamap_doc(url), ledger_url)
    email = str(world.user(uid)["email"]).upper()
    rid = submit(rt.ledger, rt.datamap,
                 ticket("T-1", "erasure", [{"type": "email", "value": email}])).request_id
    return Erasure(rt, world, uid, rid, url)


@pytest.fixture
def erasure(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Erasure]:
    # Outside Prefect there is no run; pretend there is one, as the flow has.
    monkeypatch.setattr(pipeline.steps, "current_run", lambda: dict(RUN))
    started = _start(tmp_path, db_url, _beside(db_url))
    previous = set_runtime(started.rt)
    yield started
    set_runtime(previous)
    started.rt.close()


def _erase(e: Erasure) -> None:
    rids = [e.request_id]
    assert open_requests(e.rt, rids, owner="test-run").ready == rids
    resolve_identities(e.rt, rids)
    apply_to_system(e.rt, "db", rids)
    apply_to_system(e.rt, "courier", rids)
    verify_system(e.rt, "db", rids)


def _confirm(e: Erasure) -> None:
    partners.confirm(e.rt, e.request_id, "courier", by="privacy desk", reference="CR-77",
                     at=CONFIRMED)


def _complete(e: Erasure) -> dict[str, Any]:
    _erase(e)
    _confirm(e)
    assert e.rt.ledger.get(e.request_id).status is Status.COMPLETED
    return build_certificate(e.rt.ledger, e.rt.datamap, e.request_id, ISSUED)


def _identity_values(world: sqlworld.World, uid: int) -> list[str]:
    user = world.user(uid)
    values = [str(user["email"]), str(user["phone"]), sqlworld.phone_for(uid),
              "+86" + sqlworld.phone_for(uid), str(user["nickname"])]
    values += [str(r["device_id"]) for r in world.rows.get("devices", [])
               if r["user_id"] == uid]
    values += [str(r["body"]) for r in world.rows.get("posts", []) if r["user_id"] == uid]
    return values


# -- what the certificate says ----------------------------------------------------------------
def test_the_certificate_says_what_the_ledger_recorded(erasure: Erasure) -> None:
    body = _complete(erasure)
    ledger = erasure.rt.ledger
    # Bookkeeping rows are not systems.
    ledger.record_step(erasure.request_id, "certificate", "deliverable", StepAction.CERTIFY,
                       StepStatus.SUCCEEDED)
    body = build_certificate(ledger, erasure.rt.datamap, erasure.request_id, ISSUED)
    steps = {(s.system, s.action.value): s for s in ledger.steps([erasure.request_id])}

    assert body["format"] == FORMAT
    assert body["issued_at"] == "2026-11-22T08:00:00Z"
    request = body["request"]
    assert (request["id"], request["ticket_id"], request["type"], request["regime"]) == (
        erasure.request_id, "T-1", "erasure", "pipl")
    # The certificate is issued before the request closes (a failure to issue it keeps the
    # request open): its own `issued_at` is the moment, not the request's status.
    assert "status" not in request and "completed_at" not in request
    assert request["datamap_version"] == "test-1" and request["policy_version"] == "test"
    assert request["received_at"] == "2026-11-20T09:30:00Z"
    assert request["due_at"] is not None and request["effective_due_at"] == request["due_at"]

    [db] = body["systems"]
    assert db["system"] == "db" and db["kind"] == "sql"
    erase, verify = steps[("db", "erase")], steps[("db", "verify")]
    for count in ("found", "deleted", "anonymized", "retained"):
        assert db["erase"][count] == getattr(erase, count)
    assert db["erase"]["status"] == "succeeded"
    assert db["erase"]["attempts"] == erase.attempts == 1
    assert db["erase"]["run"] == RUN
    assert db["erase"]["started_at"] and db["erase"]["finished_at"]
    parts = {p["part"]: p for p in db["erase"]["parts"]}
    recorded = {k: v for k, v in erase.details.items() if not k.startswith("_")}
    assert set(parts) == set(recorded)
    assert [p["part"] for p in db["erase"]["parts"]] == sorted(parts)
    for name, part in parts.items():
        assert part["statements"] == recorded[name]["statements"]
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in part["statements"])
        for count in ("found", "deleted", "anonymized", "retained"):
            assert part[count] == recorded[name][count]
    assert sum(len(p["statements"]) for p in parts.values()) > 0
    assert parts["posts"]["deleted"] > 0

    assert db["verification"]["status"] == "succeeded"
    assert db["verification"]["remaining"] == verify.remaining == 0
    assert all(p["remaining"] == 0 for p in db["verification"]["parts"])
    assert db["verification"]["run"] == RUN

    # What was kept, and why.
    holds = {h["part"]: h for h in body["holds"]}
    assert holds["orders"]["reasons"] == ["tax law: 3 years"]
    assert holds["orders"]["retained"] == parts["orders"]["retained"] > 0
    assert holds["users"]["reasons"] == ["referenced by retained orders"]
    assert all(h["system"] == "db" for h in body["holds"])

    [courier] = body["partners"]
    assert courier["system"] == "courier" and courier["protocol"] == "manual"
    assert courier["status"] == "confirmed" and courier["step_status"] == "succeeded"
    assert courier["confirmed_by"] == "privacy desk" and courier["reference"] == "CR-77"
    assert courier["confirmed_at"] == "2026-11-21T16:00:00Z"
    assert courier["subject_request_id"]
    assert courier["updated_at"]

    # Which identities the proof looked for: the ticket's email, and what resolution learnt
    # from the account's own rows (its id, its phone, its devices), by type, never values.
    devices = [r for r in erasure.world.rows.get("devices", []) if r["user_id"] == erasure.uid]
    expected = {"user_id": 1, "phone": 1, **({"device_id": len(devices)} if devices else {})}
    assert body["identities"]["learnt"] == expected
    assert body["identities"]["withheld"] == {} and body["identities"]["unreadable"] == {}
    assert body["identities"]["searched"] == sorted({"email", *expected})
    assert db["verification"]["searched"] == {"email": 1, **expected}
    assert db["erase"]["searched"] == db["verification"]["searched"]

    assert body["outcome"] == {"status": "complete", "reasons": []}
    # The same ledger gives the same certificate.
    again = build_certificate(ledger, erasure.rt.datamap, erasure.request_id, ISSUED)
    assert canonical_bytes(again) == canonical_bytes(body)


def test_the_file_holds_no_identity_of_the_subject(erasure: Erasure, tmp_path: Path) -> None:
    _erase(erasure)
    _confirm(erasure)
    path, digest = issue_certificate(erasure.rt.ledger, erasure.rt.datamap,
                                     erasure.request_id, new_signing_key(),
                                     tmp_path / "certs", ISSUED)
    data = path.read_bytes().lower()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    needles = _identity_values(erasure.world, erasure.uid)
    assert len(needles) >= 6
    for needle in needles:
        assert needle.lower().encode() not in data, needle


def test_a_row_left_behind_makes_it_incomplete(erasure: Erasure) -> None:
    rids = [erasure.request_id]
    open_requests(erasure.rt, rids, owner="test-run")
    resolve_identities(erasure.rt, rids)
    apply_to_system(erasure.rt, "db", rids)
    apply_to_system(erasure.rt, "courier", rids)
    # Something wrote a row for the subject after the erasure: the look again finds it.
    engine = sa.create_engine(erasure.url)
    with engine.begin() as conn:
        conn.execute(sqlworld.posts.insert().values(id=10**7, user_id=erasure.uid,
                                                    body="written late"))
    engine.dispose()
    verify_system(erasure.rt, "db", rids)
    _confirm(erasure)

    body = build_certificate(erasure.rt.ledger, erasure.rt.datamap, erasure.request_id, ISSUED)

    [db] = body["systems"]
    assert db["erase"]["status"] == "succeeded"
    assert db["verification"]["remaining"] == 1
    assert {p["part"]: p["remaining"] for p in db["verification"]["parts"]}["posts"] == 1
    assert body["outcome"]["status"] == "incomplete"
    [reason] = body["outcome"]["reasons"]
    assert (reason["system"], reason["step"], reason["status"]) == ("db", "verify", "failed")
    assert "posts" in reason["error"]


def test_a_failed_step_and_a_waiting_partner_make_it_incomplete(erasure: Erasure) -> None:
    rids = [erasure.request_id]
    open_requests(erasure.rt, rids, owner="test-run")
    erasure.rt.connector("db")  # reflect the schema first, then break the database under it
    engine = sa.create_engine(erasure.url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE post_tags"))
    engine.dispose()
    with pytest.raises(StepFailed):
        apply_to_system(erasure.rt, "db", rids)
    apply_to_system(erasure.rt, "courier", rids)  # the person has not confirmed yet

    body = build_certificate(erasure.rt.ledger, erasure.rt.datamap, erasure.request_id, ISSUED)

    assert body["outcome"]["status"] == "incomplete"
    reasons = {(r["system"], r["step"]): r for r in body["outcome"]["reasons"]}
    assert set(reasons) == {("db", "erase"), ("courier", "partner")}
    assert reasons[("db", "erase")]["status"] == "failed"
    assert "post_tags" in reasons[("db", "erase")]["error"]
    assert reasons[("courier", "partner")]["status"] == "pending_external"
    [courier] = body["partners"]
    assert courier["status"] == "awaiting_confirmation"
    assert body["systems"][0]["verification"] is None


def test_identities_that_could_not_be_resolved_make_it_incomplete(
    erasure: Erasure, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The look-up of the account's other identities failed: whatever the other systems
    # found, they may not have looked for the phone in the logs. Never "complete".
    def unreachable(self: Any, subjects: Any) -> Any:
        raise sa.exc.OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr("connectors.sql.SqlConnector.discover", unreachable)
    _erase(erasure)
    _confirm(erasure)
    body = build_certificate(erasure.rt.ledger, erasure.rt.datamap, erasure.request_id, ISSUED)
    assert body["outcome"]["status"] == "incomplete"
    [reason] = body["outcome"]["reasons"]
    assert (reason["system"], reason["step"], reason["status"]) == ("db", "resolve", "failed")
    assert "identities not resolved" in reason["error"]
    assert body["identities"]["learnt"] == {}
    assert erasure.rt.ledger.get(erasure.request_id).status is Status.PARTIALLY_COMPLETED


def test_an_access_request_gets_no_certificate(erasure: Erasure) -> None:
    email = str(erasure.world.user(erasure.uid)["email"])
    rid = submit(erasure.rt.ledger, erasure.rt.datamap,
                 ticket("T-2", "access", [{"type": "email", "value": email}])).request_id
    with pytest.raises(ValueError, match=r"access.*erasure certificate"):
        build_certificate(erasure.rt.ledger, erasure.rt.datamap, rid, ISSUED)


def test_issued_at_needs_a_time_zone(erasure: Erasure) -> None:
    with pytest.raises(ValueError, match="time zone"):
        build_certificate(erasure.rt.ledger, erasure.rt.datamap, erasure.request_id,
                          datetime(2026, 11, 22, 8, 0))


class LedgerClock:
    """The ledger's clock, moved by hand: which moment a step was recorded at is the point."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def _issued(e: Erasure) -> dict[str, Any]:
    """The certificate the ledger points to, read from its file and verified."""
    [step] = [s for s in e.rt.ledger.steps([e.request_id]) if s.system == CERTIFICATE]
    document = read_certificate(Path(step.details["path"]))
    return verify_certificate(document, [e.rt.settings.signing_key_pair().public_key()]).body


def test_a_certificate_issued_again_keeps_when_the_partner_finished(
    tmp_path: Path, db_url: str, prefect_server: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request flow on a real Prefect server: the database cannot be erased at first,
    the courier is confirmed meanwhile, and the request closes partial with a certificate.
    Once the database is back, a rerun completes it and issues the certificate again. The
    courier finished once, on the day it was confirmed: its entry is the same in both
    certificates. And the completed request no longer carries the failure's reason."""
    from dsrflow.ledger import store
    from flows.request import BatchIncomplete, process_requests

    clock = LedgerClock(datetime(2026, 11, 20, 10, 0, tzinfo=UTC))
    monkeypatch.setattr(store, "now", clock)
    e = _start(tmp_path, db_url, _beside(db_url))
    previous = set_runtime(e.rt)
    try:
        # The database goes away while it erases (its identities were resolved before).
        real_erase = SqlConnector.erase
        down = sa.exc.OperationalError("DELETE", {}, Exception("no such table: post_tags"))

        def erase(self: SqlConnector, *args: Any, **kwargs: Any) -> Any:
            if database_down:
                raise down
            return real_erase(self, *args, **kwargs)

        database_down = True
        monkeypatch.setattr(SqlConnector, "erase", erase)

        # The run fails although the courier is still pending: a database that could not
        # be erased must not wait days for the partner's answer to show.
        with pytest.raises(BatchIncomplete, match="1 of 1"):
            process_requests([e.request_id])
        assert e.rt.ledger.get(e.request_id).status is Status.IN_PROGRESS
        clock.at = datetime(2026, 11, 21, 16, 5, tzinfo=UTC)
        partners.confirm(e.rt, e.request_id, "courier", by="privacy desk", reference="CR-77",
                         at=CONFIRMED)
        partial = e.rt.ledger.get(e.request_id)
        assert partial.status is Status.PARTIALLY_COMPLETED
        assert partial.reason is not None and "post_tags" in partial.reason
        first = _issued(e)
        assert first["outcome"]["status"] == "incomplete"

        database_down = False
        clock.at = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
        try:
            outcome = process_requests([e.request_id])
        except BatchIncomplete as exc:  # pragma: no cover - the message says which
            pytest.fail(str(exc))
        assert outcome == {e.request_id: "completed"}
        assert e.rt.ledger.get(e.request_id).reason is None
        second = _issued(e)
    finally:
        set_runtime(previous)
        e.rt.close()

    assert second["outcome"] == {"status": "complete", "reasons": []}
    assert second["issued_at"] != first["issued_at"]
    [courier] = second["partners"]
    assert second["partners"] == first["partners"]
    assert courier["finished_at"] == "2026-11-21T16:05:00Z"  # the ledger's confirmation
    assert courier["confirmed_at"] == "2026-11-21T16:00:00Z"  # the time the person gave
    assert (courier["confirmed_by"], courier["reference"]) == ("privacy desk", "CR-77")
    assert courier["run"] is None  # confirmed by a person, in no Prefect run
    # The database's own entry is the rerun's: it did the work then.
    [db] = second["systems"]
    assert db["erase"]["finished_at"] == "2026-11-25T09:00:00Z"


# -- signatures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signed_body(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One real certificate body (SQLite), shared by the signature tests."""
    tmp = tmp_path_factory.mktemp("cert")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline.steps, "current_run", lambda: dict(RUN))
        e = _start(tmp, f"sqlite:///{tmp / 'userdb.sqlite'}")
        try:
            yield _complete(e)
        finally:
            e.rt.close()


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return new_signing_key()


def test_a_signed_certificate_verifies_with_the_trusted_key(
    signed_body: dict[str, Any], key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    document = sign_certificate(signed_body, key)
    signature = document["signature"]
    assert signature["algorithm"] == "Ed25519"
    assert signature["key_id"] == key_id(key.public_key())
    assert len(signature["key_id"]) == 16
    assert base64.b64decode(signature["public_key"]) == base64.b64decode(
        encode_public_key(key.public_key()))

    path, digest = write_certificate(document, tmp_path)
    assert path == tmp_path / f"{signed_body['request']['id']}.json"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    verified = verify_certificate(read_certificate(path), [new_signing_key().public_key(),
                                                           key.public_key()])
    assert verified.request_id == signed_body["request"]["id"]
    assert verified.ticket_id == "T-1"
    assert verified.outcome == "complete"
    assert verified.issued_at == "2026-11-22T08:00:00Z"
    assert verified.key_id == signature["key_id"]
    assert verified.body == signed_body


def _first_part_with_statements(body: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in body["systems"][0]["erase"]["parts"] if p["statements"])


TAMPERING: dict[str, Callable[[dict[str, Any]], None]] = {
    "a count": lambda b: b["systems"][0]["erase"].update(
        deleted=b["systems"][0]["erase"]["deleted"] + 1),
    "a part's count": lambda b: b["systems"][0]["erase"]["parts"][0].update(found=0),
    "a statement hash": lambda b: _first_part_with_statements(b)["statements"].__setitem__(
        0, "0" * 64),
    "the outcome": lambda b: b["outcome"].update(status="incomplete"),
    "the request id": lambda b: b["request"].update(id=str(uuid.uuid4())),
    "a hold removed": lambda b: b["holds"].pop(),
    "the verification": lambda b: b["systems"][0]["verification"].update(remaining=0,
                                                                         status="failed"),
}


@pytest.mark.parametrize("what", sorted(TAMPERING))
def test_any_change_breaks_the_signature(
    signed_body: dict[str, Any], key: Ed25519PrivateKey, what: str
) -> None:
    document = sign_certificate(signed_body, key)
    # Through JSON, as a file would carry it.
    tampered = json.loads(json.dumps(document))
    before = canonical_bytes(tampered["certificate"])
    TAMPERING[what](tampered["certificate"])
    assert canonical_bytes(tampered["certificate"]) != before
    with pytest.raises(CertificateInvalid, match="signature does not match"):
        verify_certificate(tampered, [key.public_key()])


def test_another_key_is_not_trusted(signed_body: dict[str, Any], key: Ed25519PrivateKey) -> None:
    document = sign_certificate(signed_body, key)
    with pytest.raises(CertificateInvalid, match="not trusted"):
        verify_certificate(document, [new_signing_key().public_key()])
    with pytest.raises(CertificateInvalid, match="not trusted"):
        verify_certificate(document, [])


def test_a_forger_cannot_re_sign_with_their_own_key(
    signed_body: dict[str, Any], key: Ed25519PrivateKey
) -> None:
    forged_body = copy.deepcopy(signed_body)
    forged_body["holds"] = []
    forger = new_signing_key()
    # Signed with their own key, which they embed: internally consistent, and worthless.
    forged = sign_certificate(forged_body, forger)
    assert verify_certificate(forged, [forger.public_key()]).outcome == "complete"
    with pytest.raises(CertificateInvalid, match="not trusted"):
        verify_certificate(forged, [key.public_key()])
    # Claiming the trusted key's id (and embedding the trusted public key) does not help.
    forged["signature"]["key_id"] = key_id(key.public_key())
    forged["signature"]["public_key"] = encode_public_key(key.public_key())
    with pytest.raises(CertificateInvalid, match="signature does not match"):
        verify_certificate(forged, [key.public_key()])
    # Nor does the trusted key's id next to the forger's own public key.
    forged["signature"]["public_key"] = encode_public_key(forger.public_key())
    with pytest.raises(CertificateInvalid, match="embedded public key"):
        verify_certificate(forged, [key.public_key()])


MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "not an object": (lambda d: [d], "malformed document"),
    "no signature": (lambda d: {"certificate": d["certificate"]}, "malformed document"),
    "no certificate": (lambda d: {"signature": d["signature"]}, "malformed document"),
    "unknown format": (
        lambda d: {**d, "certificate": {**d["certificate"], "format": "other/2"}},
        "unknown format"),
    "another algorithm": (
        lambda d: {**d, "signature": {**d["signature"], "algorithm": "RS256"}},
        "not Ed25519"),
    "no request id": (
        lambda d: {**d, "certificate": {**d["certificate"], "request": {}}},
        "malformed document"),
    "signature not base64": (
        lambda d: {**d, "signature": {**d["signature"], "value": "***"}}, "not base64"),
}


@pytest.mark.parametrize("what", sorted(MALFORMED))
def test_malformed_documents_are_invalid_with_a_reason(
    signed_body: dict[str, Any], key: Ed25519PrivateKey, what: str
) -> None:
    change, reason = MALFORMED[what]
    with pytest.raises(CertificateInvalid, match=reason):
        verify_certificate(change(sign_certificate(signed_body, key)), [key.public_key()])


def test_a_file_that_is_not_json_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(CertificateInvalid, match="not JSON"):
        read_certificate(path)


def test_writing_again_replaces_the_file(
    signed_body: dict[str, Any], key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    first, _ = write_certificate(sign_certificate(signed_body, key), tmp_path)
    later = {**signed_body, "issued_at": "2026-12-01T00:00:00Z"}
    second, digest = write_certificate(sign_certificate(later, key), tmp_path)
    assert first == second
    assert read_certificate(second)["certificate"]["issued_at"] == (  # type: ignore[index]
        "2026-12-01T00:00:00Z")
    assert hashlib.sha256(second.read_bytes()).hexdigest() == digest
    assert len(list(tmp_path.iterdir())) == 1


def test_a_request_id_that_is_no_file_name_is_refused(
    signed_body: dict[str, Any], key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    body = {**signed_body, "request": {**signed_body["request"], "id": "../escape"}}
    with pytest.raises(ValueError, match="cannot name a file"):
        write_certificate(sign_certificate(body, key), tmp_path / "certs")
    assert not (tmp_path / "escape.json").exists()


# -- settings ---------------------------------------------------------------------------------
def _config(folder: Path, doc: dict[str, object]) -> Path:
    path = folder / "dsrflow.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _old_key_file(path: Path) -> dict[str, str]:
    """A key file as `keys new` wrote it before certificates existed."""
    keys = {"token_key": encode_key(new_key()), "encryption_key": encode_key(new_key())}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(keys, fh)
    return keys


def test_the_signing_key_comes_from_the_key_file(tmp_path: Path) -> None:
    write_key_file(tmp_path / "keys.json")
    settings = load_settings(_config(tmp_path, {"key_file": "keys.json"}))
    stored = read_key_file(tmp_path / "keys.json")["signing_key"]
    assert encode_signing_key(settings.signing_key_pair()) == stored
    assert settings.certificates_path == tmp_path / ".dsrflow" / "certificates"


def test_the_environment_signing_key_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_key_file(tmp_path / "keys.json")
    mine = encode_signing_key(new_signing_key())
    monkeypatch.setenv("DSRFLOW_SIGNING_KEY", mine)
    settings = load_settings(_config(tmp_path, {"key_file": "keys.json"}))
    assert encode_signing_key(settings.signing_key_pair()) == mine
    assert mine not in repr(settings)


def test_an_old_key_file_still_gives_the_keyring_but_no_signing_key(tmp_path: Path) -> None:
    keys = _old_key_file(tmp_path / "keys.json")
    settings = load_settings(_config(tmp_path, {"key_file": "keys.json"}))
    assert encode_key(settings.keyring().token_key) == keys["token_key"]
    with pytest.raises(ConfigError) as exc:
        settings.signing_key_pair()
    message = str(exc.value)
    assert "DSRFLOW_SIGNING_KEY" in message
    assert "dsrflow keys new" in message
    assert "dsrflow keys add-signing" in message


@pytest.mark.parametrize(("value", "problem"), [
    (base64.b64encode(b"k" * 16).decode(), "32 bytes"),
    ("not base64 at all!", "base64"),
])
def test_a_malformed_signing_key_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str, problem: str
) -> None:
    monkeypatch.setenv("DSRFLOW_SIGNING_KEY", value)
    with pytest.raises(ConfigError) as exc:
        load_settings(_config(tmp_path, {})).signing_key_pair()
    assert "signing_key" in str(exc.value) and problem in str(exc.value)
    assert value not in str(exc.value)


def test_a_url_safe_signing_key_is_accepted() -> None:
    key = new_signing_key()
    text = encode_signing_key(key).replace("+", "-").replace("/", "_")
    assert encode_signing_key(decode_signing_key(text)) == encode_signing_key(key)


# -- the command line -------------------------------------------------------------------------
@pytest.fixture
def configured(tmp_path: Path) -> tuple[Path, Ed25519PrivateKey]:
    """A dsrflow.yaml whose key file (written by `keys new`) holds a signing key."""
    result = invoke("keys", "new", tmp_path / "keys.json")
    assert result.exit_code == 0, result.output
    config = _config(tmp_path, {"key_file": "keys.json"})
    return config, load_settings(config).signing_key_pair()


def test_keys_new_writes_a_signing_key_and_never_prints_it(tmp_path: Path) -> None:
    result = invoke("keys", "new", tmp_path / "keys.json")
    assert result.exit_code == 0, result.output
    stored = read_key_file(tmp_path / "keys.json")
    key = decode_signing_key(stored["signing_key"])
    assert stored["signing_key"] not in result.output
    assert key_id(key.public_key())


def test_keys_add_signing_adds_one_to_an_old_file_once(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    old = _old_key_file(path)

    first = invoke("keys", "add-signing", path)

    assert first.exit_code == 0, first.output
    stored = read_key_file(path)
    assert {k: stored[k] for k in old} == old  # the other keys are untouched
    key = decode_signing_key(stored["signing_key"])
    assert key_id(key.public_key()) in first.stdout
    assert stored["signing_key"] not in first.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json"]

    before = path.read_bytes()
    second = invoke("keys", "add-signing", path)
    assert second.exit_code == 1
    assert "already has a signing key" in second.stderr
    assert path.read_bytes() == before


def test_keys_add_signing_of_a_missing_file_fails(tmp_path: Path) -> None:
    result = invoke("keys", "add-signing", tmp_path / "nowhere.json")
    assert result.exit_code == 1
    assert "not found" in result.stderr


def test_keys_public_key_prints_what_a_regulator_needs(
    configured: tuple[Path, Ed25519PrivateKey]
) -> None:
    config, key = configured
    result = invoke("keys", "public-key", "--config", config)
    assert result.exit_code == 0, result.output
    assert f"public key: {encode_public_key(key.public_key())}" in result.stdout
    assert f"key id: {key_id(key.public_key())}" in result.stdout
    assert encode_signing_key(key) not in result.output


def test_keys_public_key_without_a_signing_key_says_how_to_get_one(tmp_path: Path) -> None:
    _old_key_file(tmp_path / "keys.json")
    result = invoke("keys", "public-key", "--config", _config(tmp_path, {"key_file": "keys.json"}))
    assert result.exit_code == 2
    assert "add-signing" in result.stderr


def test_certificate_verify_with_the_configured_key(
    configured: tuple[Path, Ed25519PrivateKey], signed_body: dict[str, Any], tmp_path: Path
) -> None:
    config, key = configured
    path, _ = write_certificate(sign_certificate(signed_body, key), tmp_path / "certs")

    result = invoke("certificate", "verify", path, "--config", config)

    assert result.exit_code == 0, result.output
    rid = signed_body["request"]["id"]
    assert result.stdout.strip() == (
        f"valid: request {rid} (ticket T-1), complete, issued 2026-11-22T08:00:00Z, "
        f"key {key_id(key.public_key())}\n"
        f"signed by the current signing key ({key_id(key.public_key())})"
    )


def test_certificate_verify_with_a_given_public_key(
    signed_body: dict[str, Any], tmp_path: Path
) -> None:
    key = new_signing_key()
    path, _ = write_certificate(sign_certificate(signed_body, key), tmp_path)
    public = encode_public_key(key.public_key())

    # No config at all: the regulator has only the file and the public key.
    assert invoke("certificate", "verify", path, "--public-key", public).exit_code == 0

    other = encode_public_key(new_signing_key().public_key())
    result = invoke("certificate", "verify", path, "--public-key", other)
    assert result.exit_code == 1
    assert result.stderr.startswith("INVALID: key ")
    assert "not trusted" in result.stderr
    assert result.stdout == ""


def test_certificate_verify_of_a_tampered_file_fails(
    configured: tuple[Path, Ed25519PrivateKey], signed_body: dict[str, Any], tmp_path: Path
) -> None:
    config, key = configured
    path, _ = write_certificate(sign_certificate(signed_body, key), tmp_path / "certs")
    document = json.loads(path.read_text())
    document["certificate"]["systems"][0]["erase"]["deleted"] += 1
    path.write_text(json.dumps(document, indent=2))

    result = invoke("certificate", "verify", path, "--config", config)

    assert result.exit_code == 1
    assert "INVALID: signature does not match" in result.stderr


def test_certificate_verify_without_a_trusted_key_is_an_error(
    signed_body: dict[str, Any], tmp_path: Path
) -> None:
    path, _ = write_certificate(sign_certificate(signed_body, new_signing_key()), tmp_path)
    _old_key_file(tmp_path / "keys.json")
    config = _config(tmp_path, {"key_file": "keys.json"})
    result = invoke("certificate", "verify", path, "--config", config)
    assert result.exit_code == 2
    assert "--public-key" in result.stderr
    bad = invoke("certificate", "verify", path, "--public-key", "short")
    assert bad.exit_code == 2
    assert "--public-key" in bad.stderr
    missing = invoke("certificate", "verify", tmp_path / "nope.json", "--public-key",
                     encode_public_key(new_signing_key().public_key()))
    assert missing.exit_code == 2
    assert "cannot read" in missing.stderr


def _forged_duplicate_body(signed: dict[str, Any]) -> str:
    """The signed document with a second 'certificate' first: a reader sees the forged one
    (no holds), a JSON parser keeps the last, which the signature matches."""
    forged = {**signed["certificate"], "holds": []}
    return ('{"certificate": ' + json.dumps(forged) + ', "certificate": '
            + json.dumps(signed["certificate"]) + ', "signature": '
            + json.dumps(signed["signature"]) + "}\n")


def _duplicate_inner_key(signed: dict[str, Any]) -> str:
    """An 'outcome' said twice inside the signed body: 'complete' last, as signed."""
    text = json.dumps(signed)
    return text.replace('"outcome": {', '"outcome": {"status": "incomplete", "reasons": []}, '
                                         '"outcome": {', 1)


# What a file may not hold beside the signed body, and the reason `verify` gives.
OUTSIDE_THE_BODY: dict[str, tuple[Callable[[dict[str, Any]], str], str]] = {
    "an extra top-level key": (
        lambda d: json.dumps({**d, "approved_by": "the DPO"}),
        "unsigned data beside the certificate: key 'approved_by'"),
    "extra keys in the signature": (
        lambda d: json.dumps({**d, "signature": {**d["signature"], "note": "re-signed",
                                                  "valid_until": "2030"}}),
        "unsigned data in the signature: keys 'note', 'valid_until'"),
    "a second certificate": (
        _forged_duplicate_body, "the key 'certificate' appears twice in one object"),
    "a key twice inside the body": (
        _duplicate_inner_key, "the key 'outcome' appears twice in one object"),
    "trailing data": (
        lambda d: json.dumps(d) + '\n{"certificate": {"outcome": "complete"}}\n',
        "unsigned data after the JSON document"),
    "trailing text": (lambda d: json.dumps(d) + " -- verified by hand\n",
                      "unsigned data after the JSON document"),
    "NaN": (lambda d: json.dumps({**d, "certificate": {**d["certificate"], "x": 1}})
            .replace('"x": 1', '"x": NaN'), "NaN is not JSON"),
}


@pytest.mark.parametrize("what", sorted(OUTSIDE_THE_BODY))
def test_certificate_verify_refuses_anything_outside_the_signed_body(
    signed_body: dict[str, Any], tmp_path: Path, what: str
) -> None:
    key = new_signing_key()
    document = sign_certificate(signed_body, key)
    path, _ = write_certificate(document, tmp_path)
    public = encode_public_key(key.public_key())
    assert invoke("certificate", "verify", path, "--public-key", public).exit_code == 0
    make, reason = OUTSIDE_THE_BODY[what]
    path.write_text(make(json.loads(path.read_text())))

    result = invoke("certificate", "verify", path, "--public-key", public)

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("INVALID: ")
    assert reason in flat(result.stderr)
