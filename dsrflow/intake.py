"""Turning tickets into requests: validate, check against the data map, record once.

Whatever arrives ends up in the ledger: a valid ticket as a request (once per ticket id),
an invalid one as `rejected` with the reason naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dsrflow.datamap import DataMap, SqlSystem
from dsrflow.ledger import Ledger
from dsrflow.model import DEFAULT_PHONE_REGIONS, Regime, Status
from dsrflow.tickets import Rejection, Ticket, parse_ticket


@dataclass(frozen=True)
class Submitted:
    request_id: str
    status: Status
    created: bool  # False when the ticket id was already on record (a redelivery)
    ticket_id: str | None
    reason: str | None = None


def submit(
    ledger: Ledger,
    datamap: DataMap,
    raw: bytes | str | dict[str, Any],
    received_at: datetime | None = None,
    phone_regions: Mapping[Regime, str] = DEFAULT_PHONE_REGIONS,
) -> Submitted:
    parsed = parse_ticket(raw, phone_regions)
    if isinstance(parsed, Ticket):
        problem = check_against_datamap(parsed, datamap)
        if problem is not None:
            received_at = received_at or parsed.received_at
            parsed = Rejection(
                problem,
                ticket_id=parsed.ticket_id,
                type=parsed.type.value,
                regime=parsed.regime.value,
                channel=parsed.channel,
            )
    if isinstance(parsed, Rejection):
        request_id = ledger.reject(parsed, received_at)
        return Submitted(request_id, Status.REJECTED, True, parsed.ticket_id, parsed.reason)
    request_id, created = ledger.accept(parsed, datamap.version, datamap.policy_version)
    record = ledger.get(request_id)
    return Submitted(request_id, record.status, created, parsed.ticket_id, record.deadline_error)


def check_against_datamap(ticket: Ticket, datamap: DataMap) -> str | None:
    """What the ticket asks for must exist in the data map."""
    known = datamap.all_categories()
    for i, category in enumerate(ticket.scope or []):
        if category not in known:
            return f"scope.{i}: unknown category {category!r}"
    for target in ticket.corrections or {}:
        system_name, table_name, column_name = target.split(".")
        system = datamap.systems.get(system_name)
        table = system.tables.get(table_name) if isinstance(system, SqlSystem) else None
        if table is None or column_name not in table.columns:
            return f"corrections.{target}: not in the data map"
    return None
