"""Intake with the Wishe data map: every ticket ends up in the ledger exactly once, a valid
one as a request, an invalid one as `rejected` with a reason that names the field and never
quotes the ticket."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import OperationalError

from dsrflow.crypto import Keyring
from dsrflow.datamap import DataMap, load_datamap, parse_datamap
from dsrflow.identities import Identity, IdentityType
from dsrflow.intake import key_columns, submit
from dsrflow.ledger import Ledger
from dsrflow.model import POLICY_CATEGORIES, Status
from tests import sqlworld

WISHE = Path(__file__).resolve().parent.parent / "examples" / "wishe"
TICKETS = sorted((WISHE / "tickets").glob("*.json"))
VALID = [p for p in TICKETS if not p.name.startswith("invalid")]


@pytest.fixture(scope="module")
def datamap() -> DataMap:
    return load_datamap(WISHE / "datamap.yaml")


@pytest.fixture
def ledger(tmp_path: Path, keyring: Keyring) -> Iterator[Ledger]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", keyring)
    ledger.migrate()
    yield ledger
    ledger.dispose()


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WISHE / "tickets" / name).read_text())
    return data


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_each_wishe_ticket_becomes_a_request(
    path: Path, ledger: Ledger, datamap: DataMap
) -> None:
    doc = json.loads(path.read_text())
    result = submit(ledger, datamap, path.read_bytes())

    verified = bool((doc.get("verification") or {}).get("verified_at"))
    assert result.created
    assert result.ticket_id == doc["ticket_id"]
    assert result.status is (Status.VERIFIED if verified else Status.AWAITING_VERIFICATION)
    record = ledger.get(result.request_id)
    assert record.status is result.status
    assert record.type is not None and record.type.value == doc["type"]
    assert record.regime is not None and record.regime.value == doc["regime"]
    assert record.datamap_version == datamap.version == "wishe-2026.11"
    assert record.policy_version == datamap.policy_version
    assert record.due_at is not None and record.due_at > record.received_at
    if doc.get("scope"):
        assert record.scope == frozenset(doc["scope"])
    if doc.get("corrections"):
        assert ledger.corrections(result.request_id) == doc["corrections"]
    # The subject is findable by the identities the ticket gave, however they were typed.
    for given_identity in doc["identities"]:
        identity = Identity.model_validate(given_identity, context={"phone_region": "CN"})
        assert result.request_id in ledger.find_by_identity(identity)


def test_the_wishe_queue_ends_up_in_the_ledger(ledger: Ledger, datamap: DataMap) -> None:
    results = [submit(ledger, datamap, p.read_bytes()) for p in TICKETS]

    by_status = {r.ticket_id: r.status for r in results}
    assert by_status["WSH-2026-11-0009"] is Status.AWAITING_VERIFICATION  # no verified_at
    assert by_status["WSH-2026-11-0010"] is Status.REJECTED
    assert sum(s is Status.VERIFIED for s in by_status.values()) == 10
    assert len(ledger.all()) == len(TICKETS) == 12
    assert len(ledger.runnable()) == 10


def test_a_redelivered_ticket_is_the_same_request(ledger: Ledger, datamap: DataMap) -> None:
    raw = (WISHE / "tickets" / "03-erasure.json").read_bytes()
    first = submit(ledger, datamap, raw)
    # Redelivered as parsed JSON, with the email spelt differently: same ticket id.
    doc = json.loads(raw)
    doc["identities"][0]["value"] = doc["identities"][0]["value"].upper()
    second = submit(ledger, datamap, doc)

    assert first.created and not second.created
    assert second.request_id == first.request_id
    assert second.status is first.status
    assert ledger.count() == 1


def test_an_unknown_scope_category_is_rejected_and_named(
    ledger: Ledger, datamap: DataMap
) -> None:
    doc = load("05-consent_withdrawal.json")
    doc["scope"] = ["locaton"]

    result = submit(ledger, datamap, doc)

    assert result.status is Status.REJECTED
    assert result.reason is not None and result.reason.startswith("scope.0")
    # The sender's text is not repeated, even where it is only meant as a category name: a
    # reason names the field, never the value (docs/tickets.md).
    assert "locaton" not in result.reason
    [record] = ledger.all()
    assert record.status is Status.REJECTED
    assert record.ticket_id == "WSH-2026-11-0005"
    assert record.type is not None and record.type.value == "consent_withdrawal"
    assert record.reason == result.reason
    assert ledger.find_by_ticket("WSH-2026-11-0005") is None  # it is not a request


def test_a_ticket_rejected_by_the_datamap_keeps_its_received_time(
    ledger: Ledger, datamap: DataMap
) -> None:
    """The ticket itself was valid, received_at included: the record of its rejection
    should say when it was received, not when intake got round to it."""
    doc = load("05-consent_withdrawal.json")  # received 2026-11-09T20:12:40+08:00
    doc["scope"] = ["locaton"]
    result = submit(ledger, datamap, doc)
    assert ledger.get(result.request_id).received_at == datetime(
        2026, 11, 9, 12, 12, 40, tzinfo=UTC
    )


def test_the_second_unknown_category_is_the_one_named(ledger: Ledger, datamap: DataMap) -> None:
    doc = load("05-consent_withdrawal.json")
    doc["scope"] = ["location", "contacts", "horoscope"]
    result = submit(ledger, datamap, doc)
    assert result.status is Status.REJECTED
    assert result.reason is not None and result.reason.startswith("scope.2")


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(scope=st.lists(st.sampled_from(sorted(POLICY_CATEGORIES)), min_size=1, max_size=4,
                      unique=True))
def test_any_policy_category_is_a_valid_scope(
    ledger: Ledger, datamap: DataMap, scope: list[str]
) -> None:
    doc = load("05-consent_withdrawal.json")
    doc["scope"] = scope
    doc["ticket_id"] = "WSH-SCOPE-" + "-".join(scope)[:100]
    result = submit(ledger, datamap, doc)
    assert result.status is Status.VERIFIED, result.reason
    assert ledger.get(result.request_id).scope == frozenset(scope)


@pytest.mark.parametrize(
    "target",
    [
        "userdb.users.nickname",  # no such column
        "userdb.accounts.unit_name",  # no such table
        "crm.users.unit_name",  # no such system
    ],
)
def test_a_correction_outside_the_datamap_is_rejected_and_named(
    ledger: Ledger, datamap: DataMap, target: str
) -> None:
    doc = load("04-rectification.json")
    doc["corrections"] = {"userdb.users.unit_name": "新公司", target: "x"}

    result = submit(ledger, datamap, doc)

    assert result.status is Status.REJECTED
    assert result.reason == f"corrections.{target}: not in the data map"
    assert "新公司" not in result.reason  # the corrected values are not repeated
    [record] = ledger.all()
    assert record.status is Status.REJECTED
    assert record.reason == result.reason
    assert ledger.subjects([record.id]) == []  # nothing of the subject is kept


def test_a_rejected_ticket_can_be_sent_again_fixed(ledger: Ledger, datamap: DataMap) -> None:
    doc = load("05-consent_withdrawal.json")
    doc["scope"] = ["locaton"]
    rejected = submit(ledger, datamap, doc)
    rejected_again = submit(ledger, datamap, doc)
    doc["scope"] = ["location"]
    accepted = submit(ledger, datamap, doc)

    assert rejected.status is rejected_again.status is Status.REJECTED
    assert rejected.request_id != rejected_again.request_id  # every delivery is on record
    assert accepted.status is Status.VERIFIED and accepted.created
    assert [r.status for r in ledger.all()].count(Status.REJECTED) == 2
    assert ledger.find_by_ticket("WSH-2026-11-0005") == accepted.request_id


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"ticket_id": "WSH-1", "type": "access",', "not valid JSON"),
        (b"\xff\xfe not text", "not valid JSON"),
        (b"[1, 2, 3]", "a ticket must be a JSON object"),
        (b"", "not valid JSON"),
    ],
)
def test_malformed_input_is_rejected_and_recorded(
    ledger: Ledger, datamap: DataMap, raw: bytes, reason: str
) -> None:
    result = submit(ledger, datamap, raw)

    assert result.status is Status.REJECTED
    assert result.reason is not None and result.reason.startswith(reason)
    [record] = ledger.all()
    assert record.id == result.request_id
    assert record.status is Status.REJECTED
    assert record.reason == result.reason
    assert record.ticket_id is None
    assert ledger.verify_audit_chain() is None


def test_the_invalid_wishe_ticket_is_rejected_without_quoting_it(
    ledger: Ledger, datamap: DataMap
) -> None:
    result = submit(ledger, datamap, (WISHE / "tickets" / "invalid-bad-email-unknown-type.json")
                    .read_bytes())

    assert result.status is Status.REJECTED
    assert result.ticket_id == "WSH-2026-11-0010"
    assert result.reason is not None
    assert "type" in result.reason and "identities.0" in result.reason
    assert "zhang.wei" not in result.reason.casefold()
    [record] = ledger.all()
    assert (record.ticket_id, record.status) == ("WSH-2026-11-0010", Status.REJECTED)
    assert record.regime is not None and record.regime.value == "pipl"
    assert ledger.find_by_identity(
        Identity(type=IdentityType.EMAIL, value="zhang.wei@example.com")
    ) == []


# -- rectification never moves a key ----------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "role"),
    [
        ("userdb.users.id", "the primary key"),
        ("userdb.users.email", "an identity column: email"),
        ("userdb.users.phone", "an identity column: phone"),
        ("userdb.users.restricted_at", "the restriction column"),
        ("userdb.third_party_logins.openid", "an identity column: third_party"),
        ("userdb.third_party_logins.provider", "an identity's provider column"),
        ("userdb.uploads.user_id", "a reference to users"),
        ("userdb.follows.followee_id", "the primary key"),
    ],
)
def test_a_rectification_never_targets_a_key_column(
    ledger: Ledger, datamap: DataMap, target: str, role: str
) -> None:
    doc = load("04-rectification.json")
    doc["corrections"] = {"userdb.users.unit_name": "新公司", target: "8"}

    result = submit(ledger, datamap, doc)

    assert result.status is Status.REJECTED
    assert result.reason == f"corrections.{target}: a key column ({role}) cannot be rectified"
    [record] = ledger.all()
    assert (record.status, record.reason) == (Status.REJECTED, result.reason)


def test_columns_that_list_object_keys_and_columns_referenced_elsewhere_are_keys() -> None:
    doc = yaml.safe_load((WISHE / "datamap.yaml").read_text())
    doc["systems"]["media"]["buckets"]["wishe-faces"]["ownership"] = [
        {"keys_from": {"system": "userdb", "table": "face_templates", "column": "object_key"}}]
    doc["systems"]["userdb"]["tables"]["contacts"]["references"].append(
        {"columns": ["contact_phone"], "table": "users", "to_columns": ["phone"]})
    dm = parse_datamap(doc)

    faces = key_columns(dm, "userdb", "face_templates")
    assert faces["object_key"] == "lists the object keys of systems.media.buckets.wishe-faces"
    assert key_columns(dm, "userdb", "users")["phone"] == "an identity column: phone"
    assert "template" not in faces and "unit_name" not in key_columns(dm, "userdb", "users")


def test_a_column_other_rows_point_at_is_a_key() -> None:
    doc = copy.deepcopy(sqlworld.DATAMAP_DOC)
    doc["systems"]["db"]["tables"]["devices"]["references"].append(
        {"columns": ["device_id"], "table": "users", "to_columns": ["nickname"]})
    assert key_columns(parse_datamap(doc), "db", "users")["nickname"] == "referenced by devices"


# -- identities the data map could not use -----------------------------------------------------
def _with_identities(*identities: dict[str, str]) -> dict[str, Any]:
    doc = load("03-erasure.json")
    doc["identities"] = [{"type": "email", "value": "li.na@example.com"}, *identities]
    return doc


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("²", "not a user id"),  # passed isdigit(), then crashed int() in the SQL step
        ("٣", "not a user id"),
        ("--5", "not a user id"),
        ("\\d+", "not a user id"),
        ("%", "not a user id"),
        ("1 OR 1=1", "not a user id"),
        ("../../etc", "not a user id"),
        ("9223372036854775808", "outside the signed 64-bit range"),
        ("7..8", "relative path step"),  # a user id, but not in uploads/{user_id}/
        ("7.", None),
    ],
)
def test_a_user_id_is_refused_unless_every_system_can_use_it(
    ledger: Ledger, datamap: DataMap, value: str, why: str | None
) -> None:
    result = submit(ledger, datamap, _with_identities({"type": "user_id", "value": value}))

    if why is None:
        assert result.status is Status.VERIFIED, result.reason
        return
    assert result.status is Status.REJECTED
    assert result.reason is not None
    assert result.reason.startswith("identities.1: user_id: ") and why in result.reason
    assert value not in result.reason and "li.na" not in result.reason
    if why == "relative path step":
        assert "object key (systems.media.buckets.wishe-uploads)" in result.reason
    [record] = ledger.all()
    assert (record.status, record.reason) == (Status.REJECTED, result.reason)
    assert ledger.subjects([record.id]) == []


def test_values_are_refused_for_a_key_template_only_where_one_uses_their_type(
    ledger: Ledger, datamap: DataMap
) -> None:
    hostile = {"type": "device_id", "value": "../../etc"}
    # Wishe puts only user ids into object keys: a device id may hold a slash.
    assert submit(ledger, datamap, _with_identities(hostile)).status is Status.VERIFIED

    doc = yaml.safe_load((WISHE / "datamap.yaml").read_text())
    doc["systems"]["media"]["buckets"]["wishe-faces"]["ownership"] = [
        {"key_template": "faces/{device_id}.bin"}]
    ticket = _with_identities(hostile)
    ticket["ticket_id"] = "WSH-DEVICE-1"
    result = submit(ledger, parse_datamap(doc), ticket)

    assert result.status is Status.REJECTED
    assert result.reason == (
        "identities.1: device_id: contains a path separator, and would be part of an object "
        "key (systems.media.buckets.wishe-faces)")


def test_every_identity_problem_is_named_up_to_three(ledger: Ledger, datamap: DataMap) -> None:
    bad = [{"type": "user_id", "value": v} for v in ("²", "-", "a b", "9" * 30)]
    result = submit(ledger, datamap, _with_identities(*bad))
    assert result.reason is not None
    assert [p.split(":")[0] for p in result.reason.split("; ")] == [
        "identities.1", "identities.2", "identities.3"]
    assert result.reason.endswith("(+1 more)")


# -- nothing a ticket holds makes intake raise --------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # json.loads raises ValueError past 4,300 digits.
        ('{"ticket_id": "WSH-X", "n": ' + "7" * 4301 + "}", "not valid JSON: a number too"),
        # Year 1 east of Greenwich cannot be converted to UTC; in Dublin, the deadline code
        # overflowed.
        (json.dumps({**load("03-erasure.json"), "received_at": "0001-01-01T00:00:00+01:00",
                     "verification": None}), "received_at: before 2000-01-01"),
        (json.dumps({**load("03-erasure.json"), "received_at": "0001-01-01T00:00:00Z",
                     "verification": None}), "received_at: before 2000-01-01"),
        (json.dumps({**load("03-erasure.json"), "received_at": 1762247147}),
         "received_at: must be an RFC 3339"),
        (json.dumps(load("03-erasure.json")).replace('"channel": "email"',
                                                     '"channel": "\\ud83d"'),
         "channel: contains a control character or a lone surrogate"),
    ],
    ids=["huge-integer", "year-1-east", "year-1-dublin", "epoch", "lone-surrogate"],
)
def test_inputs_that_crashed_intake_are_recorded_as_rejected(
    ledger: Ledger, datamap: DataMap, raw: str, reason: str
) -> None:
    result = submit(ledger, datamap, raw)

    assert result.status is Status.REJECTED
    assert result.reason is not None and result.reason.startswith(reason)
    [record] = ledger.all()
    assert (record.id, record.status, record.reason) == (
        result.request_id, Status.REJECTED, result.reason)
    assert ledger.verify_audit_chain() is None


SECRET = "secret.person@example.com"


def test_a_bug_met_while_validating_is_a_recorded_rejection(
    ledger: Ledger, datamap: DataMap, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any) -> None:
        raise KeyError(SECRET)

    monkeypatch.setattr("dsrflow.intake.check_against_datamap", boom)
    result = submit(ledger, datamap, _with_identities({"type": "email", "value": SECRET}))

    assert (result.status, result.reason) == (Status.REJECTED, "internal error: KeyError")
    [record] = ledger.all()
    assert (record.ticket_id, record.reason) == ("WSH-2026-11-0003", "internal error: KeyError")
    assert record.regime is not None and record.regime.value == "gdpr"


def test_a_bug_met_while_recording_is_a_recorded_rejection(
    ledger: Ledger, datamap: DataMap, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any) -> None:
        raise OverflowError(SECRET)

    monkeypatch.setattr(ledger, "record_ticket", boom)
    result = submit(ledger, datamap, load("03-erasure.json"))

    assert (result.status, result.reason) == (Status.REJECTED, "internal error: OverflowError")
    [record] = ledger.all()
    assert (record.ticket_id, record.status) == ("WSH-2026-11-0003", Status.REJECTED)
    # A rejection is not a request: the ticket can be sent again once the bug is fixed.
    assert ledger.find_by_ticket("WSH-2026-11-0003") is None


def test_a_ledger_outage_is_the_callers_to_handle(
    ledger: Ledger, datamap: DataMap, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(ledger, "record_ticket", down)
    with pytest.raises(OperationalError):
        submit(ledger, datamap, load("03-erasure.json"))
    assert ledger.all() == []
