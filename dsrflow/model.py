"""The domain model: request types, regimes, statuses and the status machine."""

from __future__ import annotations

from enum import StrEnum


class RequestType(StrEnum):
    ACCESS = "access"
    PORTABILITY = "portability"
    ERASURE = "erasure"
    RECTIFICATION = "rectification"
    CONSENT_WITHDRAWAL = "consent_withdrawal"
    ACCOUNT_CANCELLATION = "account_cancellation"
    RESTRICTION = "restriction"

    @property
    def erases(self) -> bool:
        """Whether the request removes data (and so needs verification and a certificate)."""
        return self in ERASING_TYPES

    @property
    def collects(self) -> bool:
        return self in (RequestType.ACCESS, RequestType.PORTABILITY)


ERASING_TYPES = frozenset(
    {RequestType.ERASURE, RequestType.CONSENT_WITHDRAWAL, RequestType.ACCOUNT_CANCELLATION}
)


# The channel of the erasures dsrflow files itself when an account's retention period ends
# (`account_retention` rules): the controller's own decision, not a subject's request, so
# the subject's gates (repeats, a guardian) do not apply. Intake refuses it on any ticket
# from outside, where it would be a way round those gates.
RETENTION_CHANNEL = "retention"


class Regime(StrEnum):
    PIPL = "pipl"
    GDPR = "gdpr"
    CCPA = "ccpa"
    UK_GDPR = "uk_gdpr"


# Where a national-format phone number is read when the ticket does not give the subject's
# country (settings: `phone_regions`). GDPR spans many countries: no default.
DEFAULT_PHONE_REGIONS: dict[Regime, str] = {
    Regime.PIPL: "CN",
    Regime.UK_GDPR: "GB",
    Regime.CCPA: "US",
}


class Status(StrEnum):
    RECEIVED = "received"
    AWAITING_VERIFICATION = "awaiting_verification"
    # The subject is a child (policy 7.x): nothing runs until a guardian's authority is
    # verified, or the subject comes of age. The clock runs meanwhile.
    AWAITING_GUARDIAN = "awaiting_guardian"
    VERIFIED = "verified"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    PARTIALLY_COMPLETED = "partially_completed"
    REFUSED = "refused"
    FAILED = "failed"
    REJECTED = "rejected"  # the ticket itself was invalid; it never became a request

    @property
    def is_open(self) -> bool:
        return self in OPEN_STATUSES


OPEN_STATUSES = frozenset(
    {Status.RECEIVED, Status.AWAITING_VERIFICATION, Status.AWAITING_GUARDIAN, Status.VERIFIED,
     Status.IN_PROGRESS}
)

# Re-running a failed or partial request is allowed (every step is idempotent); a
# completed, refused or rejected one is final.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.RECEIVED: frozenset({Status.AWAITING_VERIFICATION, Status.VERIFIED, Status.REFUSED}),
    Status.AWAITING_VERIFICATION: frozenset({Status.VERIFIED, Status.REFUSED}),
    Status.VERIFIED: frozenset({Status.IN_PROGRESS, Status.REFUSED}),
    # Back to verified once a guardian is verified or the subject comes of age: the next
    # run screens it again.
    Status.AWAITING_GUARDIAN: frozenset({Status.VERIFIED, Status.REFUSED}),
    Status.IN_PROGRESS: frozenset(
        {Status.COMPLETED, Status.PARTIALLY_COMPLETED, Status.FAILED, Status.REFUSED,
         Status.AWAITING_GUARDIAN}
    ),
    Status.PARTIALLY_COMPLETED: frozenset({Status.IN_PROGRESS}),
    Status.FAILED: frozenset({Status.IN_PROGRESS}),
    Status.COMPLETED: frozenset(),
    Status.REFUSED: frozenset(),
    Status.REJECTED: frozenset(),
}


class InvalidTransition(ValueError):
    def __init__(self, current: Status, target: Status) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none (final)"
        super().__init__(f"a request cannot go from {current} to {target}; allowed: {allowed}")
        self.current = current
        self.target = target


def check_transition(current: Status, target: Status) -> None:
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(current, target)


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_APPLICABLE = "not_applicable"
    # Handed to someone else (a partner, a person) who has not answered yet: the request
    # stays open, no worker waits, and a scheduled check or a callback moves it on.
    PENDING_EXTERNAL = "pending_external"
    # Cannot go on without a person (the partner refused, a signature did not verify):
    # retrying would not help.
    BLOCKED = "blocked"


_S = StepStatus
# Target -> the step states it may be written over (the ledger checks it with the row
# locked). An attempt may start over anything and an answer or a person's confirmation
# may finish anything; but what a run reports from before a partner's answer (waiting,
# failed, blocked) never overwrites that answer: the callback that came while the run was
# between its POST and its step write stays applied.
STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    _S.PENDING: frozenset({_S.PENDING}),
    _S.RUNNING: frozenset(StepStatus),
    _S.SUCCEEDED: frozenset(StepStatus),
    _S.PENDING_EXTERNAL: frozenset({_S.PENDING, _S.RUNNING, _S.PENDING_EXTERNAL}),
    _S.FAILED: frozenset(StepStatus) - {_S.SUCCEEDED},
    _S.BLOCKED: frozenset(StepStatus) - {_S.SUCCEEDED},
    _S.NOT_APPLICABLE: frozenset(StepStatus) - {_S.SUCCEEDED},
}


class PartnerStatus(StrEnum):
    """Where a request handed to one partner stands (the ledger's partner_requests)."""

    CREATED = "created"  # its id is committed; the partner has not acknowledged it
    SUBMITTED = "submitted"  # acknowledged (OpenDSR 201): polled or called back
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    AWAITING_CONFIRMATION = "awaiting_confirmation"  # a person confirms when it is done
    COMPLETED = "completed"  # the partner said so
    CONFIRMED = "confirmed"  # a person said so
    BLOCKED = "blocked"  # refused, untrusted or unanswerable: a person acts


_P = PartnerStatus
_WORKING = frozenset({_P.SUBMITTED, _P.PENDING, _P.IN_PROGRESS})
# Target -> the states it may be reached from. A write whose request is no longer in one of
# them lost a race (a callback that came before the POST returned, a second poller) and
# changes nothing: a later state is never overwritten by an earlier one.
PARTNER_TRANSITIONS: dict[PartnerStatus, frozenset[PartnerStatus]] = {
    _P.CREATED: frozenset({_P.BLOCKED, _P.SUBMITTED}),  # a person's retry; the partner lost it
    _P.SUBMITTED: frozenset({_P.CREATED}),
    # A stale answer (pending, after in_progress) arriving late does not move it back.
    _P.PENDING: frozenset({_P.CREATED, _P.SUBMITTED, _P.PENDING}),
    _P.IN_PROGRESS: frozenset({_P.CREATED}) | _WORKING,
    _P.AWAITING_CONFIRMATION: frozenset({_P.CREATED}),
    _P.COMPLETED: frozenset({_P.CREATED, _P.AWAITING_CONFIRMATION}) | _WORKING,
    _P.CONFIRMED: frozenset({_P.CREATED, _P.AWAITING_CONFIRMATION, _P.BLOCKED}) | _WORKING,
    _P.BLOCKED: frozenset({_P.CREATED, _P.AWAITING_CONFIRMATION}) | _WORKING,
}
# Nothing more will come from the partner: a rerun sends nothing and polls nothing.
PARTNER_DONE = frozenset({_P.COMPLETED, _P.CONFIRMED})
PARTNER_WAITING = frozenset({_P.CREATED, _P.AWAITING_CONFIRMATION}) | _WORKING


class StepAction(StrEnum):
    # Learning, from a SQL system, the identities the request did not give (the account's
    # phone behind the ticket's email): every later step and verification looks for them.
    RESOLVE = "resolve"
    COLLECT = "collect"
    ERASE = "erase"
    VERIFY = "verify"
    RECTIFY = "rectify"
    RESTRICT = "restrict"
    # What the requester receives at the end (kind "deliverable" in the ledger's steps).
    DELIVER = "deliver"  # the access package
    CERTIFY = "certify"  # the erasure certificate


def action_for(request_type: RequestType) -> StepAction:
    """What a request of this type does in each system it concerns."""
    if request_type.collects:
        return StepAction.COLLECT
    if request_type.erases:
        return StepAction.ERASE
    if request_type is RequestType.RECTIFICATION:
        return StepAction.RECTIFY
    return StepAction.RESTRICT


# The ledger's steps table holds, beside the systems' own steps, the bookkeeping of what a
# request delivers (an access package, an erasure certificate) under this kind.
DELIVERABLE_KIND = "deliverable"
# Where a step's details keep the Prefect run that did the work (a leading underscore: the
# other keys are the connector's parts, named after tables, buckets and log sources).
RUN_KEY = "_run"
# ... the identity types the step looked for, and how many of each ({"email": 1, ...}).
SEARCHED_KEY = "_searched"
# What an erasure reported just before it committed, kept until its outcome is recorded: a
# run killed in between leaves it, and the rerun's counts are read against it.
PREPARED_KEY = "_prepared"
# ... and the pieces an erasure reported as it went that the ledger has counted (log files
# rewritten, by a token per rewrite): a rerun that finds a piece done but not marked as
# reported asks this, so a report that reached the ledger before a crash is not counted
# twice, and one that did not is not lost.
COUNTED_KEY = "_counted"
# ... and, for a `resolve` step, what it learnt, withheld and could not read, per type.
IDENTITIES_KEY = "_identities"
# ... the sensitive categories (policy 2.1, as the data map marks them) the step touched.
SENSITIVE_KEY = "_sensitive"


# Categories named in the privacy policy (2.x); a data map may add its own.
POLICY_CATEGORIES = frozenset(
    {
        "account",
        "contact",
        "security",
        "device",
        "location",
        "contacts",
        "biometric",
        "media",
        "third_party_login",
        "profile",
        "content",
        "behaviour",
        "transaction",
        "logs",
        "minors",
        "identifier",
    }
)
