"""OpenDSR callbacks over real HTTP both ways: the reference partner calls our endpoint
(uvicorn on loopback), which trusts a callback only from an allowed domain with a valid
signature, and closes the request once nothing is outstanding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployments.callbacks import create_app, serving
from dsrflow.intake import submit
from dsrflow.model import Status
from examples.partner import Faults, ReferencePartner
from flows.request import process_requests
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket


@pytest.fixture
def setup(
    tmp_path: Path, prefect_server: list[Path]
) -> Iterator[tuple[Runtime, ReferencePartner, sqlworld.World]]:
    world, url = sqlworld.sqlite_world(tmp_path, 5, 5)
    with ReferencePartner() as partner:
        (tmp_path / "partner.pem").write_bytes(partner.certificate_pem)
        rt = make_runtime(tmp_path, sqlworld.datamap_with_partner(
            url, partner.url, partner.domain))
        previous = set_runtime(rt)
        with serving(create_app(rt)) as base:
            rt.settings.callback_base_url = base
            yield rt, partner, world
        set_runtime(previous)
        rt.close()


def _run(rt: Runtime, world: sqlworld.World, uid: int) -> tuple[str, str]:
    email = str(world.user(uid)["email"])
    rid = submit(rt.ledger, rt.datamap,
                 ticket(f"C-{uid}", "erasure", [{"type": "email", "value": email}])).request_id
    process_requests([rid])
    [row] = rt.ledger.partner_requests([rid])
    return rid, str(row.subject_request_id)


def test_a_signed_callback_completes_the_request(
    setup: tuple[Runtime, ReferencePartner, sqlworld.World]
) -> None:
    rt, partner, world = setup
    rid, srid = _run(rt, world, 2)
    assert rt.ledger.get(rid).status is Status.IN_PROGRESS
    partner.complete(srid)  # sends the callback and waits for our answer
    assert rt.ledger.get(rid).status is Status.COMPLETED


@pytest.mark.parametrize(
    "fault",
    [Faults(callback_signature="bad"), Faults(callback_signature="missing"),
     Faults(callback_domain="evil.example")],
    ids=["bad-signature", "missing-signature", "domain-not-allowed"],
)
def test_an_untrusted_callback_changes_nothing(
    setup: tuple[Runtime, ReferencePartner, sqlworld.World], fault: Faults
) -> None:
    rt, partner, world = setup
    rid, srid = _run(rt, world, 3)
    partner.set_faults(fault)
    partner.complete(srid)
    assert rt.ledger.get(rid).status is Status.IN_PROGRESS
    [attempt] = [a for a in partner.callbacks if a.subject_request_id == srid][-1:]
    assert attempt.status_code == 403


def test_unknown_partner_and_garbage_are_refused(
    setup: tuple[Runtime, ReferencePartner, sqlworld.World]
) -> None:
    rt, _, _ = setup
    base = rt.settings.callback_base_url
    assert httpx.post(f"{base}/opendsr/callbacks/nobody", content=b"{}").status_code == 404
    assert httpx.post(f"{base}/opendsr/callbacks/adnet", content=b"{").status_code == 403
