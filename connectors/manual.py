"""Partners reached by people, not APIs: a vendor's privacy inbox or portal.

Nothing is sent from here. The step records that the partner must be asked (the data
map's `contact` says who and how) and waits, as `pending_external`, until a person
confirms it — in the Prefect UI or with `dsrflow partner confirm` — with who confirmed and
the partner's reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import ClassVar

from connectors.partner import Acknowledgement, Answer, Correction, PartnerConfigError
from dsrflow.datamap import PartnerSystem
from dsrflow.identities import Subject
from dsrflow.model import PartnerStatus


class ManualPartner:
    kind = "partner"
    protocol: ClassVar[str] = "manual"
    polled: ClassVar[bool] = False
    calls_back: ClassVar[bool] = False

    def __init__(self, name: str, system: PartnerSystem) -> None:
        if system.protocol != "manual":
            raise PartnerConfigError(f"{name}: protocol is {system.protocol}, not manual")
        self.name = name
        self.system = system

    @classmethod
    def from_map(cls, name: str, system: PartnerSystem, *, base_dir: Path | None = None,
                 secret: str | None = None) -> ManualPartner:
        del base_dir, secret  # nothing is sent
        return cls(name, system)

    def instructions(self, request_type: str) -> str:
        """What the person is asked to do (no identities: they look the subject up in the
        ledger's request, by its id)."""
        return f"ask {self.system.contact} to carry out the {request_type} and confirm it"

    def hand_over(
        self, subject: Subject, request_type: str, regime: str, subject_request_id: str,
        callback_url: str | None, *, submitted_time: datetime | None = None,
        corrections: Sequence[Correction] = (),
    ) -> Acknowledgement:
        """Nothing goes out: a person asks the partner, then confirms."""
        return Acknowledgement(PartnerStatus.AWAITING_CONFIRMATION,
                               note=self.instructions(request_type))

    def where(self, subject_request_id: str) -> Answer:
        raise NotImplementedError("a manual partner is confirmed by a person, not polled")
