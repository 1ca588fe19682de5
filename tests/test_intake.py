"""Intake with the Wishe data map: every ticket ends up in the ledger exactly once, a valid
one as a request, an invalid one as `rejected` with a reason that names the field and never
quotes the ticket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsrflow.crypto import Keyring
from dsrflow.datamap import DataMap, load_datamap
from dsrflow.identities import Identity, IdentityType
from dsrflow.intake import submit
from dsrflow.ledger import Ledger
from dsrflow.model import POLICY_CATEGORIES, Status

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
    assert sum(s is Status.VERIFIED for s in by_status.values()) == 8
    assert len(ledger.all()) == len(TICKETS) == 10
    assert len(ledger.runnable()) == 8


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
    assert "locaton" in result.reason  # a category name is not personal data
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
