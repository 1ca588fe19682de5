"""Partners reached by people, not APIs: a vendor's privacy inbox or portal.

Nothing is sent from here. The step records that the partner must be asked (the data
map's `contact` says who and how) and waits, as `pending_external`, until a person
confirms it — in the Prefect UI or with `dsrflow partner confirm` — with who confirmed and
the partner's reference.
"""

from __future__ import annotations

from dsrflow.datamap import PartnerSystem


class ManualPartner:
    kind = "partner"
    protocol = "manual"

    def __init__(self, name: str, system: PartnerSystem) -> None:
        if system.protocol != "manual":
            raise ValueError(f"{name}: protocol is {system.protocol}, not manual")
        self.name = name
        self.system = system

    def instructions(self, request_type: str) -> str:
        """What the person is asked to do (no identities: they look the subject up in the
        ledger's request, by its id)."""
        return f"ask {self.system.contact} to carry out the {request_type} and confirm it"
