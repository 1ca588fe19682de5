"""One request's page (`request_view`, HTML) and its Markdown twin: the dates right to the
day (received, verified, due, extended with its notice and reason, completed), the days
used and left, the data-map and policy versions, each system's counts and reasons, the
partners and the deliverables — and never an identity. On a ledger filled through intake,
with steps recorded as the tasks record them, on a fixed clock."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from dsrflow.identities import Identity
from dsrflow.intake import submit
from dsrflow.ledger import StepCounts, UnknownRequest
from dsrflow.ledger import store as ledger_store
from dsrflow.ledger.schema import requests
from dsrflow.model import PartnerStatus, Status, StepAction, StepStatus
from dsrflow.report import build_request_view, request_view, request_view_markdown
from pipeline.runtime import Runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket

# Thursday 10 December 2026, 20:00 in Shanghai, noon in Dublin.
NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
ERASER = [{"type": "email", "value": "Erin.Eraser@Example.org"},
          {"type": "phone", "value": "+86 139 1234 5678"}]
ASKER = [{"type": "email", "value": "asker.person@example.net"}]
# Typed by the support team when the package key went out: free text, may hold a number.
KEY_CHANNEL = "SMS to +86 139 1234 5678"
RUN = {"_run": {"flow_run_id": "0f" * 16, "task_run_id": "1e" * 16}}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(ledger_store, "now", clock)
    return clock


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    doc: dict[str, Any] = {**sqlworld.DATAMAP_DOC}
    # Never connected to: the page reads the ledger only.
    doc["systems"] = {"db": {**doc["systems"]["db"],
                             "url": f"sqlite:///{tmp_path / 'userdb.sqlite'}"}}
    runtime = make_runtime(tmp_path, doc)
    yield runtime
    runtime.close()


@pytest.fixture
def erased(rt: Runtime, clock: Clock) -> str:
    """GDPR erasure, received Fri 20 Nov 09:30 UTC (due Mon 21 Dec: 20 Dec is a Sunday),
    extended to 22 Feb with notice on 1 Dec, completed 4 Dec; a partner confirmed by a
    person; a certificate."""
    ledger = rt.ledger
    rid = submit(ledger, rt.datamap, ticket("T-ERASE", "erasure", ERASER, regime="gdpr")).request_id
    ledger.transition(rid, Status.IN_PROGRESS)
    with ledger.engine.begin() as conn:
        conn.execute(update(requests).where(requests.c.id == rid).values(
            extended_due_at=datetime(2027, 2, 22, 23, 59, 59, tzinfo=UTC),
            extension_notice_at=datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
            extension_reason="three partners to hear from <in writing>"))
    ledger.record_step(rid, "db", "sql", StepAction.ERASE, StepStatus.SUCCEEDED,
                       StepCounts(found=6, deleted=3, anonymized=2, retained=1),
                       details={"users": {"found": 4, "retain_reasons": [
                           "orders kept 7 years (tax law)"]},
                           "devices": {"found": 2, "retain_reasons": []}, **RUN})
    ledger.record_step(rid, "db", "sql", StepAction.VERIFY, StepStatus.SUCCEEDED,
                       StepCounts(remaining=0))
    ledger.partner_request_id(rid, "adnet", lambda: "5e1f0000-0000-4000-8000-00000000ad01")
    ledger.update_partner(rid, "adnet", PartnerStatus.CONFIRMED, confirmed_by="DPO desk",
                          reference="AD-42")
    ledger.record_step(rid, "adnet", "partner", StepAction.ERASE, StepStatus.SUCCEEDED,
                       details={"confirmed_by": "DPO desk", "reference": "AD-42",
                                "confirmed_at": "2026-12-03T10:00:00+00:00"})
    ledger.record_step(rid, "erasure-certificate", "deliverable", StepAction.CERTIFY,
                       StepStatus.SUCCEEDED,
                       details={"path": f"certificates/{rid}.json", "sha256": "ab" * 32,
                                "outcome": "erased", **RUN})
    clock.now = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    ledger.transition(rid, Status.COMPLETED)
    return rid


@pytest.fixture
def access(rt: Runtime, clock: Clock) -> str:
    """PIPL access, received Fri 20 Nov (17:30 in Shanghai), still open: due Fri 11 Dec,
    the 15th Chinese working day after. Its package is out; the key went by SMS."""
    ledger = rt.ledger
    rid = submit(ledger, rt.datamap, ticket("T-ACCESS", "access", ASKER)).request_id
    ledger.transition(rid, Status.IN_PROGRESS)
    ledger.record_step(rid, "db", "sql", StepAction.COLLECT, StepStatus.SUCCEEDED,
                       StepCounts(found=12),
                       details={"users": {"found": 12, "retain_reasons": []}, **RUN})
    ledger.record_step(rid, "access-package", "deliverable", StepAction.DELIVER,
                       StepStatus.SUCCEEDED,
                       details={"location": f"packages/{rid}.dsrpkg",
                                "expires_at": "2026-12-24T12:00:00+00:00",
                                "sha256": "cd" * 32, "key_id": "0123456789abcdef",
                                "key_handed_to": KEY_CHANNEL,
                                "key_handed_over_by": "support desk",
                                "key_handed_over_at": "2026-12-05T09:00:00+00:00", **RUN})
    return rid


def identity_spellings(identities: list[dict[str, str]]) -> set[str]:
    found = {i["value"] for i in identities}
    for given in identities:
        found.update(Identity.model_validate(given).variants())
    return found


def assert_no_identity(text: str) -> None:
    for spelling in identity_spellings(ERASER) | identity_spellings(ASKER):
        assert spelling not in text, spelling
    assert KEY_CHANNEL not in text
    assert "13912345678" not in text


def test_the_facts_of_an_extended_completed_erasure(rt: Runtime, erased: str) -> None:
    facts = dict(build_request_view(rt.ledger, rt.deadlines, erased, now=NOW).facts)

    assert facts["request id"] == erased
    assert facts["ticket id"] == "T-ERASE"
    assert (facts["type"], facts["regime"], facts["status"]) == ("erasure", "gdpr", "completed")
    assert facts["received"] == "2026-11-20T09:30:00+00:00"
    assert facts["verified"] == "2026-11-20T09:35:00+00:00"
    assert facts["due"] == "end of 2026-12-21 Europe/Dublin (2026-12-21T23:59:59+00:00)"
    assert facts["extended to"] == "end of 2027-02-22 Europe/Dublin (2027-02-22T23:59:59+00:00)"
    assert facts["extension notice given"] == "2026-12-01T10:00:00+00:00"
    assert facts["extension reason"] == "three partners to hear from <in writing>"
    assert facts["completed"] == "2026-12-04T10:00:00+00:00"
    assert facts["deadline state"] == "completed_on_time"
    # Irish working days from Friday 20 Nov to Friday 4 Dec: two full weeks.
    assert facts["business days used"] == "10"
    assert facts["business days left"] == "—"  # closed
    assert (facts["data-map version"], facts["policy version"]) == ("test-1", "test")


def test_the_facts_of_an_open_request_count_the_days_left(rt: Runtime, access: str) -> None:
    facts = dict(build_request_view(rt.ledger, rt.deadlines, access, now=NOW).facts)

    assert facts["due"] == "end of 2026-12-11 Asia/Shanghai (2026-12-11T15:59:59+00:00)"
    assert facts["extended"] == "no"
    assert facts["completed"] == "not completed"
    assert facts["business days used"] == "14"  # 23 Nov to 10 Dec
    assert facts["business days left"] == "1"  # Friday 11 Dec
    assert facts["deadline state"] == "at_risk"


def test_the_page_shows_systems_partners_and_the_certificate(
    rt: Runtime, erased: str
) -> None:
    page = request_view(rt.ledger, rt.deadlines, erased, now=NOW)

    assert page.startswith("<!doctype html>")
    assert f"<h1>Request {erased}</h1>" in page
    for text in ("test-1", "2027-02-22T23:59:59+00:00", "2026-12-01T10:00:00+00:00"):
        assert text in page
    # Escaped, like everything a person typed.
    assert "three partners to hear from &lt;in writing&gt;" in page
    systems = section(page, "Systems")
    assert ("<td>db</td><td>sql</td><td>erase</td><td>succeeded</td><td>6</td><td></td>"
            "<td>3</td><td>2</td><td>1</td><td>orders kept 7 years (tax law)</td><td>0</td>"
            "<td></td>") in systems
    assert "<td>adnet</td><td>partner</td><td>erase</td><td>succeeded</td>" in systems
    partners = section(page, "Partners")
    assert ("<td>adnet</td><td>confirmed</td><td>AD-42</td><td>DPO desk</td>"
            "<td>2026-12-03T10:00:00+00:00</td>") in partners
    deliverables = section(page, "Deliverables")
    assert "<td>erasure certificate</td><td>succeeded</td>" in deliverables
    assert f"<td>certificates/{erased}.json</td>" in deliverables
    assert f'<td class="sha">{"ab" * 32}</td>' in deliverables
    assert "<td>erased</td>" in deliverables
    assert "_run" not in page and "0f" * 16 not in page  # bookkeeping, not for the reader
    assert "http://" not in page and "https://" not in page
    assert_no_identity(page)


def test_the_page_shows_the_access_package(rt: Runtime, access: str) -> None:
    page = request_view(rt.ledger, rt.deadlines, access, now=NOW)

    systems = section(page, "Systems")
    assert "<td>db</td><td>sql</td><td>collect</td><td>succeeded</td><td>12</td><td>12</td>" in (
        systems)
    assert "not handed to any partner" in section(page, "Partners")
    deliverables = section(page, "Deliverables")
    assert (f"<td>access package</td><td>succeeded</td><td>packages/{access}.dsrpkg</td>"
            f'<td>2026-12-24T12:00:00+00:00</td><td class="sha">{"cd" * 32}</td><td></td>'
            "<td>2026-12-05T09:00:00+00:00</td>") in deliverables
    assert_no_identity(page)


def test_markdown_says_the_same(rt: Runtime, erased: str, access: str) -> None:
    text = request_view_markdown(rt.ledger, rt.deadlines, erased, now=NOW)

    lines = text.splitlines()
    assert lines[0] == f"# Request {erased}"
    for fact in ("| request id | " + erased + " |", "| data-map version | test-1 |",
                 "| policy version | test |",
                 "| extended to | end of 2027-02-22 Europe/Dublin (2027-02-22T23:59:59+00:00) |",
                 "| extension notice given | 2026-12-01T10:00:00+00:00 |",
                 "| extension reason | three partners to hear from <in writing> |",
                 "| business days used | 10 |"):
        assert fact in lines, fact
    assert "| db | sql | erase | succeeded | 6 |  | 3 | 2 | 1 | orders kept 7 years (tax law) " \
           "| 0 |  |  |" in lines
    assert any(line.startswith("| adnet | confirmed | AD-42 | DPO desk |") for line in lines)
    assert any(line.startswith(f"| erasure certificate | succeeded | certificates/{erased}")
               for line in lines)
    assert_no_identity(text)
    other = request_view_markdown(rt.ledger, rt.deadlines, access, now=NOW)
    assert "| business days left | 1 |" in other.splitlines()
    assert "Not handed to any partner." in other
    assert_no_identity(other)


def test_a_request_with_nothing_done_yet(rt: Runtime, clock: Clock) -> None:
    rid = submit(rt.ledger, rt.datamap,
                 ticket("T-WAIT", "erasure", ASKER, verified=False)).request_id
    page = request_view(rt.ledger, rt.deadlines, rid, now=NOW)
    facts = dict(build_request_view(rt.ledger, rt.deadlines, rid, now=NOW).facts)
    assert facts["verified"] == "not verified"
    assert facts["status"] == "awaiting_verification"
    assert "no system has been worked on yet" in page
    assert "no access package or erasure certificate yet" in page


def test_an_unknown_request(rt: Runtime) -> None:
    with pytest.raises(UnknownRequest):
        request_view(rt.ledger, rt.deadlines, "00000000-0000-4000-8000-000000000000", now=NOW)


def section(page: str, heading: str) -> str:
    """The part of the page under a heading, cells without their CSS classes."""
    match = re.search(rf"<h2>{heading}</h2>(.*?)(?=<h2>|<p><small>)", page, re.S)
    assert match is not None, heading
    return re.sub(r'<td class="(?!sha)[^"]*">', "<td>", match.group(1))
