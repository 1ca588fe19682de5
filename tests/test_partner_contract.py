"""The flow knows partners only through `connectors.partner.Partner`: a protocol dsrflow
has never seen (here an email processor that is polled through a ticket API), registered
in `PROTOCOLS`, is handed requests once, polled, and closes them, with no other change."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from connectors import partners as registry
from connectors.partner import Acknowledgement, Answer, Correction, PartnerRejected
from dsrflow.datamap import PartnerSystem
from dsrflow.identities import Subject
from dsrflow.intake import submit
from dsrflow.model import PartnerStatus, Status
from flows.request import process_requests
from pipeline import partners
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket


class TicketProcessor:
    """A vendor's ticket desk: a request becomes a ticket; polling reads its state."""

    kind = "partner"
    protocol: ClassVar[str] = "tickets"
    polled: ClassVar[bool] = True
    calls_back: ClassVar[bool] = False
    tickets: ClassVar[dict[str, str]] = {}
    opened: ClassVar[list[str]] = []

    def __init__(self, name: str, system: PartnerSystem) -> None:
        self.name, self.system = name, system

    @classmethod
    def from_map(cls, name: str, system: PartnerSystem, *, base_dir: Path | None = None,
                 secret: str | None = None) -> TicketProcessor:
        return cls(name, system)

    def hand_over(self, subject: Subject, request_type: str, regime: str,
                  subject_request_id: str, callback_url: str | None, *,
                  submitted_time: datetime | None = None,
                  corrections: Sequence[Correction] = ()) -> Acknowledgement:
        self.opened.append(subject_request_id)
        self.tickets.setdefault(subject_request_id, "in_progress")
        return Acknowledgement(PartnerStatus.SUBMITTED, reference=f"T-{len(self.opened)}")

    def where(self, subject_request_id: str) -> Answer:
        if subject_request_id not in self.tickets:
            raise PartnerRejected(self.name, "status", 404, None, None)
        return Answer(self.tickets[subject_request_id])


@pytest.fixture
def runtime(tmp_path: Path, prefect_server: list[Path],
            monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Runtime, sqlworld.World]]:
    monkeypatch.setitem(registry.PROTOCOLS, "webhook", TicketProcessor.from_map)
    world, url = sqlworld.sqlite_world(tmp_path, 4, 4)
    doc: dict[str, Any] = sqlworld.datamap_doc(url)
    doc["systems"]["desk"] = {
        "kind": "partner", "protocol": "webhook", "categories": ["contact"],
        "endpoint": "https://desk.example/api", "credentials_env": "UNUSED",
        "identities": [{"type": "email"}],
    }
    rt = make_runtime(tmp_path, doc)
    previous = set_runtime(rt)
    yield rt, world
    set_runtime(previous)
    rt.close()


def test_a_new_protocol_is_handed_requests_once_polled_and_closed(
    runtime: tuple[Runtime, sqlworld.World],
) -> None:
    rt, world = runtime
    rid = submit(rt.ledger, rt.datamap, ticket(
        "N-1", "erasure", [{"type": "email", "value": str(world.user(1)["email"])}])).request_id
    assert process_requests([rid]) == {rid: "in_progress"}
    assert process_requests([rid]) == {rid: "in_progress"}  # a rerun hands nothing over
    assert len(TicketProcessor.opened) == 1
    [srid] = TicketProcessor.opened
    TicketProcessor.tickets[srid] = "completed"
    assert partners.check(rt) == {rid: "desk: completed"}
    assert rt.ledger.get(rid).status is Status.COMPLETED
