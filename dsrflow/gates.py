"""The policy's gates before any system is touched, as plain decisions: is the request a
repeat (6.6.2)? The ledger keeps what each gate decided (`gate_decisions`), the pipeline
asks it (`pipeline.screening`), the report shows it.

A repeat is found by keyed token, never by a raw identity: the same subject is anyone who
shares an account-grade identity (user id, email, phone, third-party login) with the
earlier request, among the identities its ticket gave and those its own rows held.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from dsrflow.model import RequestType, Status

POLICY_REPEATS = "privacy policy 6.6.2"


class Gate(StrEnum):
    REPEAT = "repeat"
    MINOR = "minor"  # the subject was found to be a child (recorded once, when first found)


POLICY_MINORS = "privacy policy 7.x"


class RepeatDecision(StrEnum):
    NONE = "none"  # not a repeat (recorded all the same: the check ran, and decides once)
    ALLOW = "allow"  # processed like any other; the repeat is on record
    FLAG = "flag"  # processed, and shown in the report for a person to look at
    REFUSE = "refuse"  # closed as refused, with a reason the subject can be told


class RepeatRule(BaseModel):
    """`repeats.<type>:` in dsrflow.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision: RepeatDecision
    window_days: int = Field(default=30, ge=1, le=3650)
    completed_only: bool = Field(
        default=False, description="only an earlier request that completed makes this one a "
        "repeat (an erasure after a failed one is the subject trying again)"
    )


# An erasure after a completed erasure is allowed: new data may have been made since.
DEFAULT_REPEAT_RULES: dict[RequestType, RepeatRule] = {
    RequestType.ACCESS: RepeatRule(decision=RepeatDecision.FLAG),
    RequestType.PORTABILITY: RepeatRule(decision=RepeatDecision.FLAG),
    RequestType.ERASURE: RepeatRule(decision=RepeatDecision.ALLOW, completed_only=True),
}

# An earlier request that was never served does not make a later one unreasonable: a
# rejected ticket, one refused (as a repeat itself: a chain of refusals would otherwise
# stretch the window for ever), one still waiting for the subject's identity or for a
# guardian (the new ticket is often the subject's or the guardian's next try).
_NOT_SERVED = frozenset(
    {Status.REJECTED, Status.REFUSED, Status.AWAITING_VERIFICATION, Status.AWAITING_GUARDIAN}
)


def of_age_on(born: date, age: int) -> date:
    """The day someone born on `born` turns `age` (29 February: 1 March in other years)."""
    try:
        return born.replace(year=born.year + age)
    except ValueError:
        return date(born.year + age, 3, 1)


def waits_for_guardian(
    relation: str | None, guardian_verified: bool, minor: bool, age: int
) -> str | None:
    """Why the request must wait for a guardian, or None when it may go on: a child's
    request needs a verified guardian, and a guardian who says they act for the subject
    must be verified before they do, child or not."""
    if relation is not None and not guardian_verified:
        return (f"a {relation.replace('_', ' ')} acts for the subject and their guardianship "
                f"is not verified yet ({POLICY_MINORS})")
    if minor and relation is None:
        return (f"the subject is under {age}: a verified parent or guardian must make or "
                f"confirm the request ({POLICY_MINORS})")
    return None


@dataclass(frozen=True)
class Earlier:
    """An earlier request of the same subject, as the repeat check sees it."""

    request_id: str
    ticket_id: str | None
    type: RequestType
    status: Status
    received_at: datetime
    created_at: datetime


@dataclass(frozen=True)
class GateDecision:
    request_id: str
    gate: Gate
    decision: str
    reason: str
    related_request_id: str | None = None


def repeat_of(
    request_id: str,
    type_: RequestType,
    received_at: datetime,
    created_at: datetime,
    others: Iterable[Earlier],
    rules: Mapping[RequestType, RepeatRule],
) -> GateDecision:
    """The decision on a request: whether it repeats an earlier one of the same subject and
    type within its rule's window (the latest such one is named), and what that gets. Of
    two requests received at the same moment, the one recorded later is the repeat (and of
    two recorded at the same moment too, the one with the greater id): of any two, exactly
    one repeats the other."""
    rule = rules.get(type_)
    if rule is None:
        return GateDecision(request_id, Gate.REPEAT, RepeatDecision.NONE.value,
                            f"repeats of {type_.value} requests are not checked")
    since = received_at - timedelta(days=rule.window_days)
    candidates = [
        o for o in others
        if o.request_id != request_id and o.type is type_ and o.status not in _NOT_SERVED
        and since <= o.received_at
        and (o.received_at, o.created_at, o.request_id)
        < (received_at, created_at, request_id)
        and (o.status is Status.COMPLETED or not rule.completed_only)
    ]
    if not candidates:
        return GateDecision(request_id, Gate.REPEAT, RepeatDecision.NONE.value,
                            f"no earlier {type_.value} request within {rule.window_days} days")
    earlier = max(candidates, key=lambda o: (o.received_at, o.created_at, o.request_id))
    return GateDecision(
        request_id, Gate.REPEAT, rule.decision.value,
        repeat_reason(earlier, rule), earlier.request_id,
    )


def repeat_reason(earlier: Earlier, rule: RepeatRule) -> str:
    """What the subject can be told (ids and dates, no identity)."""
    named = earlier.ticket_id or earlier.request_id
    what = (f"repeats request {named} received {earlier.received_at:%Y-%m-%d}, within "
            f"{rule.window_days} days")
    if rule.decision is RepeatDecision.REFUSE:
        standing = ("its answer stands" if earlier.status is Status.COMPLETED
                    else "it is still being answered")
        return f"{what}: refused under the {POLICY_REPEATS} (repeated requests); {standing}"
    if rule.decision is RepeatDecision.FLAG:
        return f"{what}: processed and flagged for review ({POLICY_REPEATS})"
    return f"{what}: processed ({POLICY_REPEATS} allows it)"
