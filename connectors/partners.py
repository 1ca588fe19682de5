"""The partner protocols dsrflow knows, by the data map's `protocol:` name.

Adding one (an authenticated REST API of a SaaS vendor, an email processor) is one module
implementing `connectors.partner.Partner` (its `from_map` builds it from the data map's
entry) and one line here; the data map's `PartnerSystem.protocol` lists the name and says
which fields it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from connectors.manual import ManualPartner
from connectors.opendsr import OpenDsrPartner
from connectors.partner import Partner
from connectors.webhook import WebhookPartner
from dsrflow.datamap import PartnerSystem

Factory = Callable[..., Partner]

PROTOCOLS: dict[str, Factory] = {
    "opendsr": OpenDsrPartner.from_map,
    "webhook": WebhookPartner.from_map,
    "manual": ManualPartner.from_map,
}


def build_partner(name: str, system: PartnerSystem, *, base_dir: Path | None,
                  secret: str | None) -> Partner:
    """The partner connector for one data-map entry (`secret`: a token or signing secret
    already read from a Prefect Secret block, else each protocol reads its variable)."""
    return PROTOCOLS[system.protocol](name, system, base_dir=base_dir, secret=secret)
