"""Turning tickets into requests: validate, check against the data map, record once.

Whatever arrives ends up in the ledger: a valid ticket as a request (once per ticket id),
an invalid one as `rejected` with the reason naming the field. Nothing a ticket holds
makes `submit` raise: a ticket that trips over a bug is recorded as rejected with
`internal error: <type>`. Only a ledger that cannot be written stops it (the caller keeps
the ticket: the queue leaves the message for later, the CLI says it was not recorded).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import OperationalError

from dsrflow.datamap import DataMap, ObjectsSystem, SqlSystem, template_placeholders
from dsrflow.identities import IdentityType, unsafe_reason, user_id_problem
from dsrflow.ledger import Ledger
from dsrflow.model import DEFAULT_PHONE_REGIONS, RETENTION_CHANNEL, Regime, Status
from dsrflow.tickets import Rejection, Ticket, parse_ticket, rejection_of

log = logging.getLogger(__name__)
MAX_PROBLEMS = 3  # named in a reason; the rest are counted, as for a ticket's own fields


@dataclass(frozen=True)
class Submitted:
    request_id: str
    status: Status
    created: bool  # False when the ticket id was already on record (a redelivery)
    ticket_id: str | None
    reason: str | None = None


def internal_error(exc: BaseException) -> str:
    """The reason recorded for a ticket that met a bug: the exception's type, never its
    text (which may quote the ticket)."""
    return f"internal error: {type(exc).__name__}"


def submit(
    ledger: Ledger,
    datamap: DataMap,
    raw: bytes | str | dict[str, Any],
    received_at: datetime | None = None,
    phone_regions: Mapping[Regime, str] = DEFAULT_PHONE_REGIONS,
    *,
    internal: bool = False,
) -> Submitted:
    """Record one ticket: a request, or a rejection with its reason. Raises only when the
    ledger cannot record anything (`OperationalError`: unreachable, locked), or when it
    fails to record even the rejection. `internal`: filed by dsrflow itself (a retention
    sweep), the only way a request gets the `retention` channel."""
    verdict, ticket_received = _verdict(raw, datamap, phone_regions)
    if isinstance(verdict, Ticket) and verdict.channel == RETENTION_CHANNEL and not internal:
        ticket_received = verdict.received_at
        verdict = _refused(verdict, f"channel {RETENTION_CHANNEL!r} is reserved for the "
                           "erasures dsrflow's retention sweeps file")
    if isinstance(verdict, Ticket):
        try:
            accepted = ledger.record_ticket(verdict, datamap.version, datamap.policy_version)
        except OperationalError:
            raise
        except Exception as exc:  # a bug met while recording: refused, and said so
            log.warning("recording a ticket failed (%s): recorded as rejected",
                        type(exc).__name__)
            verdict = _refused(verdict, internal_error(exc))
        else:
            return Submitted(accepted.request_id, accepted.status, accepted.created,
                             verdict.ticket_id, accepted.deadline_error)
    request_id = ledger.reject(verdict, received_at or ticket_received)
    return Submitted(request_id, Status.REJECTED, True, verdict.ticket_id, verdict.reason)


def _verdict(
    raw: bytes | str | dict[str, Any], datamap: DataMap, phone_regions: Mapping[Regime, str]
) -> tuple[Ticket | Rejection, datetime | None]:
    """The ticket, or its rejection and (for a valid ticket the data map refuses) when it
    was received."""
    try:
        parsed = parse_ticket(raw, phone_regions)
        if isinstance(parsed, Rejection):
            return parsed, None
        problem = check_against_datamap(parsed, datamap)
    except Exception as exc:  # a bug met while validating: refused, and said so
        log.warning("validating a ticket failed (%s): recorded as rejected", type(exc).__name__)
        return rejection_of(raw, internal_error(exc)), None
    if problem is None:
        return parsed, None
    return _refused(parsed, problem), parsed.received_at


def _refused(ticket: Ticket, reason: str) -> Rejection:
    return Rejection(reason, ticket_id=ticket.ticket_id, type=ticket.type.value,
                     regime=ticket.regime.value, channel=ticket.channel)


def check_against_datamap(ticket: Ticket, datamap: DataMap) -> str | None:
    """What the ticket asks for must exist in the data map, and what it gives must be usable
    there. None, or the problems, each naming its field and never quoting a value."""
    problems = [
        *_scope_problems(ticket, datamap),
        *_correction_problems(ticket, datamap),
        *identity_problems(ticket, datamap),
    ]
    if not problems:
        return None
    more = len(problems) - MAX_PROBLEMS
    return "; ".join(problems[:MAX_PROBLEMS]) + (f" (+{more} more)" if more > 0 else "")


def _scope_problems(ticket: Ticket, datamap: DataMap) -> Iterator[str]:
    known = datamap.all_categories()
    for i, category in enumerate(ticket.scope or []):
        if category not in known:
            yield f"scope.{i}: not a category of the data map"


def _correction_problems(ticket: Ticket, datamap: DataMap) -> Iterator[str]:
    # A target is a field name (`system.table.column`, identifiers only): naming it is
    # naming the field. The corrected values are never repeated.
    for target in ticket.corrections or {}:
        system_name, table_name, column_name = target.split(".")
        system = datamap.systems.get(system_name)
        table = system.tables.get(table_name) if isinstance(system, SqlSystem) else None
        if table is None or column_name not in table.columns:
            yield f"corrections.{target}: not in the data map"
            continue
        role = key_columns(datamap, system_name, table_name).get(column_name)
        if role is not None:
            # Changing a key would move rows to someone else, orphan the rows and objects
            # that point at it, or lift a restriction: no rectification does that.
            yield f"corrections.{target}: a key column ({role}) cannot be rectified"


def key_columns(datamap: DataMap, system_name: str, table_name: str) -> dict[str, str]:
    """The columns of one SQL table that tie rows to people, to other rows or to objects,
    each with what it is: its primary key, identity columns (and their provider columns),
    its references, the columns other tables' references point at, the restriction
    column, and columns that list object keys (`keys_from`)."""
    system = datamap.sql(system_name)
    table = system.tables[table_name]
    keys: dict[str, str] = {}
    for column in table.primary_key:
        keys.setdefault(column, "the primary key")
    for identity in table.identities:
        keys.setdefault(identity.column, f"an identity column: {identity.type.value}")
        if identity.provider_column:
            keys.setdefault(identity.provider_column, "an identity's provider column")
    for ref in table.references:
        for column in ref.columns:
            keys.setdefault(column, f"a reference to {ref.table}")
    for other_name, other in system.tables.items():
        for ref in other.references:
            if ref.table == table_name:
                for column in ref.to_columns or table.primary_key:
                    keys.setdefault(column, f"referenced by {other_name}")
    if table.restriction_column:
        keys.setdefault(table.restriction_column, "the restriction column")
    for objects_name, objects in datamap.systems.items():
        if not isinstance(objects, ObjectsSystem):
            continue
        for bucket_name, bucket in objects.buckets.items():
            for rule in bucket.ownership:
                listed = rule.keys_from
                if listed and (listed.system, listed.table) == (system_name, table_name):
                    keys.setdefault(listed.column, f"lists the object keys of systems."
                                    f"{objects_name}.buckets.{bucket_name}")
    return keys


def identity_problems(ticket: Ticket, datamap: DataMap) -> list[str]:
    """Identities the data map could not use safely, as `identities.<i>: <type>: <why>`:
    a user id that is no key (`²`, `\\d+`, `--5`, a number past 64 bits), and a value that
    would leave its place in an object key template (`/`, `\\`, `..`, empty). Refused at
    intake so that the request fails alone, before any system sees it."""
    in_keys = key_template_uses(datamap)
    problems = []
    for i, identity in enumerate(ticket.identities):
        where = f"identities.{i}: {identity.type.value}"
        if identity.type is IdentityType.USER_ID:
            problem = user_id_problem(identity.value)
            if problem:
                problems.append(f"{where}: {problem}")
                continue
        if identity.type in in_keys:
            problem = unsafe_reason(identity.value)
            if problem:
                problems.append(f"{where}: {problem}, and would be part of an object key "
                                f"({in_keys[identity.type]})")
    return problems


def key_template_uses(datamap: DataMap) -> dict[IdentityType, str]:
    """The identity types that `key_template` placeholders put into object keys, each with
    the first bucket that does (`systems.media.buckets.wishe-uploads`)."""
    uses: dict[IdentityType, str] = {}
    for name, system in datamap.systems.items():
        if not isinstance(system, ObjectsSystem):
            continue
        for bucket_name, bucket in system.buckets.items():
            for rule in bucket.ownership:
                for placeholder in sorted(template_placeholders(rule.key_template or "")):
                    uses.setdefault(IdentityType(placeholder),
                                    f"systems.{name}.buckets.{bucket_name}")
    return uses
