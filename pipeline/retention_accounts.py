"""Accounts whose retention period ran out (policy 6.5: a cancelled account is purged 30
days after cancellation; 7.4: a child's account when its, perhaps shorter, period ends):
each gets an erasure request of its own, filed through intake like a ticket and run like
any other — every system, the partners, legal holds, verification, a certificate.

The request's ticket id is the rule's name and a keyed token of the account id
(`retention.<rule>.<token>`): no raw id in it, and a second sweep, or two at once, files
no account twice (the ledger keeps one request per ticket id). The account id itself
goes into the request's identities, encrypted like a ticket's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice

from connectors import sql_accounts
from dsrflow.datamap import AccountRetentionRule
from dsrflow.gates import of_age_on
from dsrflow.intake import submit
from dsrflow.model import RETENTION_CHANNEL, RequestType, Status
from pipeline.runtime import Runtime


@dataclass(frozen=True)
class Due:
    accounts: int  # past the cutoff with no erasure filed yet
    oldest: datetime | None  # the earliest start of a period among them


@dataclass(frozen=True)
class Filed:
    accounts: int  # past the cutoff with no erasure filed before this sweep
    filed: int  # erasure requests this sweep filed
    refused: int  # tickets intake refused (recorded as rejected, with the reason)
    batches: int
    longest_batch_s: float


def ticket_id(rt: Runtime, rule: AccountRetentionRule, account: str) -> str:
    return f"retention.{rule.name}.{rt.ledger.keyring.token('user_id', account)[:40]}"


def due(rt: Runtime, system: str, rule: AccountRetentionRule, cutoff: datetime) -> Due:
    """How many accounts the rule would file an erasure for now."""
    count = 0
    oldest: datetime | None = None
    for chunk in _new_accounts(rt, system, rule, cutoff, 1000):
        count += len(chunk)
        first = min(started for _, _, started in chunk)
        oldest = first if oldest is None else min(oldest, first)
    return Due(count, _aware(oldest))


def file_erasures(rt: Runtime, system: str, rule: AccountRetentionRule, cutoff: datetime,
                  batch: int = 1000) -> Filed:
    """File one erasure request per account past the cutoff that has none yet."""
    accounts = filed = refused = batches = 0
    longest = 0.0
    for chunk in _new_accounts(rt, system, rule, cutoff, batch):
        started = time.perf_counter()
        accounts += len(chunk)
        now = datetime.now(UTC)
        for account, ticket, _ in chunk:
            result = submit(rt.ledger, rt.datamap, {
                "ticket_id": ticket,
                "type": RequestType.ERASURE.value,
                "regime": rule.regime.value,
                "identities": [{"type": "user_id", "value": account}],
                # The data controller's own decision, not a subject's claim: nothing to
                # verify, and nobody to wait for.
                "verification": {"method": f"retention rule {rule.name}",
                                 "verified_at": now.isoformat()},
                "channel": RETENTION_CHANNEL,
                "received_at": now.isoformat(),
            }, internal=True)
            if result.status is Status.REJECTED:
                refused += 1
            elif result.created:
                filed += 1
        batches += 1
        longest = max(longest, time.perf_counter() - started)
    return Filed(accounts, filed, refused, batches, longest)


def _new_accounts(rt: Runtime, system: str, rule: AccountRetentionRule, cutoff: datetime,
                  size: int) -> Iterator[list[tuple[str, str, datetime]]]:
    """(account, its ticket id, when its period started) of the accounts past the cutoff
    without a request of this rule (for a `minors_only` rule, children's only), `size` at a
    time (one ledger look-up per chunk)."""
    today = datetime.now(UTC).date()
    age = rt.settings.guardian_age
    found = ((account, ticket_id(rt, rule, account), started) for account, started, born
             in sql_accounts.expired_accounts(rt.sql(system), rule, cutoff)
             # A birth date that cannot be read is not a child's: the general rule applies.
             if not rule.minors_only or (born is not None and of_age_on(born, age) > today))
    while chunk := list(islice(found, size)):
        known = rt.ledger.known_tickets([ticket for _, ticket, _ in chunk])
        fresh = [entry for entry in chunk if entry[1] not in known]
        if fresh:
            yield fresh


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
