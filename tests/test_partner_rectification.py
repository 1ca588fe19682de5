"""Rectifications and restrictions reach the partners that were sent the data (GDPR Art.
19): a webhook partner is sent the corrected values in its categories (and nothing of the
others) or the restriction; an OpenDSR partner, whose protocol has neither, is not sent
anything: a person is asked to do it and confirm, as for a manual partner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dsrflow.intake import submit
from dsrflow.ledger import StepRecord
from dsrflow.model import Status
from examples.partner import ReferencePartner
from examples.partner.webhook import WebhookReceiver
from flows.request import process_requests
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItcmVjdGlmaWNhdGlvbi10ZXN0cw=="
ENV = "DSRFLOW_TEST_RECTIFY_WEBHOOK_SECRET"


@pytest.fixture
def world(tmp_path: Path, prefect_server: list[Path], monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[tuple[Runtime, sqlworld.World, WebhookReceiver, ReferencePartner]]:
    monkeypatch.setenv(ENV, SECRET)
    w, url = sqlworld.sqlite_world(tmp_path, 6, 4)
    with WebhookReceiver(SECRET) as crm, ReferencePartner() as adnet:
        (tmp_path / "adnet.pem").write_bytes(adnet.certificate_pem)
        doc: dict[str, Any] = sqlworld.datamap_doc(url)
        doc["systems"]["crm"] = {
            "kind": "partner", "protocol": "webhook", "categories": ["profile"],
            "endpoint": crm.url, "credentials_env": ENV, "identities": [{"type": "email"}],
        }
        doc["systems"]["adnet"] = {
            "kind": "partner", "protocol": "opendsr", "categories": ["profile"],
            "endpoint": adnet.url, "certificate": "adnet.pem",
            "identities": [{"type": "email", "format": "sha256"}],
            "callback_domains": [adnet.domain],
        }
        doc["systems"]["ads"] = {  # shares nothing a nickname is in
            "kind": "partner", "protocol": "webhook", "categories": ["behaviour"],
            "endpoint": crm.url, "credentials_env": ENV, "identities": [{"type": "email"}],
        }
        rt = make_runtime(tmp_path, doc)
        previous = set_runtime(rt)
        try:
            yield rt, w, crm, adnet
        finally:
            set_runtime(previous)
            rt.close()


def _partner_steps(rt: Runtime, rid: str) -> dict[str, StepRecord]:
    return {s.system: s for s in rt.ledger.steps([rid]) if s.kind == "partner"}


def test_a_rectification_goes_to_the_partners_that_hold_the_field(
    world: tuple[Runtime, sqlworld.World, WebhookReceiver, ReferencePartner],
) -> None:
    rt, w, crm, adnet = world
    email = str(w.user(2)["email"])
    rid = submit(rt.ledger, rt.datamap, ticket(
        "R-1", "rectification", [{"type": "email", "value": email}],
        corrections={"db.users.nickname": "Xiao Zhang"})).request_id
    assert process_requests([rid]) == {rid: "in_progress"}  # adnet waits for a person

    [sent] = crm.requests.values()
    assert sent.body["type"] == "rectification"
    assert sent.body["corrections"] == [
        {"category": "profile", "field": "users.nickname", "value": "Xiao Zhang"}]
    steps = _partner_steps(rt, rid)
    assert set(steps) == {"crm", "adnet"}  # not `ads`: no nickname was shared with it
    assert steps["crm"].status == "succeeded" and steps["crm"].action == "rectify"
    assert steps["adnet"].status == "pending_external"
    assert "OpenDSR cannot carry a rectification" in str(steps["adnet"].error)
    assert adnet.posts == {}  # nothing it cannot read was sent to it
    assert "Xiao Zhang" not in str(steps)  # the new value stays out of the ledger's steps

    from pipeline import partners

    partners.confirm(rt, rid, "adnet", by="privacy desk", reference="AD-9")
    assert rt.ledger.get(rid).status is Status.COMPLETED


def test_a_restriction_goes_to_every_partner(
    world: tuple[Runtime, sqlworld.World, WebhookReceiver, ReferencePartner],
) -> None:
    rt, w, crm, adnet = world
    email = str(w.user(3)["email"])
    rid = submit(rt.ledger, rt.datamap, ticket(
        "S-1", "restriction", [{"type": "email", "value": email}])).request_id
    process_requests([rid])
    bodies = [r.body for r in crm.requests.values()]
    assert [b["type"] for b in bodies] == ["restriction", "restriction"]  # crm and ads
    assert all("corrections" not in b for b in bodies)
    steps = _partner_steps(rt, rid)
    assert {s: steps[s].status for s in steps} == {
        "crm": "succeeded", "ads": "succeeded", "adnet": "pending_external"}
    assert adnet.posts == {}
