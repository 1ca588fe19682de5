"""What every partner protocol shares, and the one contract they all keep.

A partner is a third party the app shares data with (privacy policy 4.1/4.2): every
erasure, cancellation, access, rectification and restriction that concerns it is handed to
it, once. How
depends on its `protocol:` in the data map, and each protocol is one module implementing
`Partner` (`connectors/opendsr.py`, `connectors/webhook.py`, `connectors/manual.py`),
registered in `PROTOCOLS` (`connectors/partners.py`). The flow (`tasks/partners.py`)
knows only this contract:

- `hand_over(...)` gives the partner one request under the id dsrflow committed before
  the first attempt, and says where it stands (`Acknowledgement`: submitted and waiting,
  waiting for a person to confirm, or done). Raising one of `BLOCKING` blocks that
  partner for that request; anything else is retried later, under the same id.
- `polled` partners answer `where(id)`: the flow asks before sending again (did an
  earlier attempt's request arrive?) and on its schedule (`check-partners`).
- `calls_back` partners also report by signed callback (`dsrflow serve`).

A batch's requests are handed to one partner from several threads at once (up to the
`partner_concurrency` setting), so `hand_over` and `where` must be safe to call
concurrently on one instance: keep no per-call state on it (httpx's `Client` is
thread-safe; tenacity's `Retrying` is made afresh for every call).

Here too: the errors every protocol raises (their messages never hold an identity or a
partner's text), identity encoding, RFC 3339 times, header reading, back-off, and the
scrubber that keeps a partner's error text out of everything but one attribute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Protocol

from connectors.http import Backoff
from dsrflow.datamap import PartnerSystem
from dsrflow.identities import Subject
from dsrflow.model import PartnerStatus

FORMATS = ("raw", "sha256", "sha1", "md5")
HEX_LENGTH = {"sha256": 64, "sha1": 40, "md5": 32}
UUID4_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_MAX_MESSAGE = 200
_EMAILISH = re.compile(r"[^\s@\"'<>(),;:]+@[^\s@\"'<>(),;:]+")
_PHONEISH = re.compile(r"(?<![\w-])\+?\d(?:[\s().-]?\d){6,}(?![\w-])")

HeaderSource = Mapping[str, str] | Iterable[tuple[str, str]]


# -- the contract ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Acknowledgement:
    """Where a request stands once handed over: `SUBMITTED` (the partner works on it and
    will say when it is done), `AWAITING_CONFIRMATION` (a person confirms), or `COMPLETED`.
    `note` says what the step waits for; the rest is kept in the ledger."""

    state: PartnerStatus
    note: str | None = None
    regulation: str | None = None  # as sent
    controller_id: str | None = None
    reference: str | None = None  # the partner's id for the request
    expected_completion_at: datetime | None = None


@dataclass(frozen=True)
class Answer:
    """A polled partner's word on a request: `pending`, `in_progress`, `completed` or
    `cancelled`, and for an access request the link to its results."""

    request_status: str
    expected_completion_time: datetime | None = None
    results_url: str | None = None
    results_count: int | None = None


@dataclass(frozen=True)
class Correction:
    """One corrected value: the data map's category and field (`table.column`) it is in."""

    category: str
    field: str
    value: str = dataclasses.field(repr=False)

    def as_json(self) -> dict[str, str]:
        return {"category": self.category, "field": self.field, "value": self.value}


class Partner(Protocol):
    name: str
    system: PartnerSystem
    protocol: ClassVar[str]
    polled: ClassVar[bool]  # `where` answers where a request stands
    calls_back: ClassVar[bool]  # signed callbacks reach `dsrflow serve`

    def hand_over(
        self, subject: Subject, request_type: str, regime: str, subject_request_id: str,
        callback_url: str | None, *, submitted_time: datetime | None = None,
        corrections: Sequence[Correction] = (),
    ) -> Acknowledgement: ...

    def where(self, subject_request_id: str) -> Answer: ...


# -- errors ----------------------------------------------------------------------------------
class PartnerError(Exception):
    """Base class of every partner protocol's errors. Messages never contain identity
    values, nor any text a partner sent."""

    retryable = False


class PartnerConfigError(PartnerError):
    """The data map's entry for the partner cannot be used (certificate, token, endpoint)."""


class InvalidRequest(PartnerError, ValueError):
    """A request we would send is malformed (id, time, identity format): a bug upstream."""


class UnsupportedRequest(PartnerError):
    """A request type or regime the partner's protocol cannot carry."""


class NoSupportedIdentity(PartnerError):
    """None of the subject's identities is of a type the partner accepts."""


class PartnerRejected(PartnerError):
    """The partner answered 4xx: not retried; fix the request or the configuration.

    The message names the partner, the operation, the HTTP status and the partner's error
    code when it is a number or a plain word (`refused`, `idempotency_key_reused`); never
    the partner's error text, which can echo what it was sent (or what it knows of the
    subject) in any spelling. That text, scrubbed, is kept in `error_message` only."""

    def __init__(
        self,
        partner: str,
        operation: str,
        status_code: int,
        error_code: int | str | None,
        error_message: str | None,
    ) -> None:
        detail = f"HTTP {status_code}"
        shown = _shown_code(error_code)
        if shown is not None:
            detail += f", error {shown}"
        super().__init__(f"{partner}: {operation} rejected ({detail})")
        self.partner = partner
        self.operation = operation
        self.status_code = status_code
        self.error_code = error_code
        self.error_message = error_message


class PartnerUnavailable(PartnerError):
    """5xx, timeouts or connection errors until the retries ran out: try again later."""

    retryable = True

    def __init__(self, partner: str, operation: str, attempts: int, last_error: str) -> None:
        super().__init__(
            f"{partner}: {operation} failed after {attempts} attempt(s); last: {last_error}"
        )
        self.partner = partner
        self.operation = operation
        self.attempts = attempts
        self.last_error = last_error


class ProtocolError(PartnerError):
    """The partner's answer does not follow its protocol (status code, fields, formats)."""


class Untrusted(PartnerError):
    """A response or callback that could not be authenticated. Endpoints answer 403."""


# What the partner refused, or what cannot be trusted: retrying would not help. A person
# looks, and `dsrflow partner retry` sends it again.
BLOCKING: tuple[type[PartnerError], ...] = (
    PartnerRejected, Untrusted, ProtocolError, NoSupportedIdentity, UnsupportedRequest,
)


# -- formats ---------------------------------------------------------------------------------
def rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("a time without a time zone is ambiguous")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    if not re.fullmatch(
        r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", text
    ):
        raise ValueError("not an RFC 3339 date-time")
    return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))


def new_subject_request_id() -> str:
    return str(uuid.uuid4())


def encode_identity(value: str, identity_format: str) -> str:
    """`value` (already normalized) in `identity_format`: raw, or the lowercase hex digest of
    its UTF-8 bytes."""
    if identity_format == "raw":
        return value
    if identity_format in HEX_LENGTH:
        return hashlib.new(identity_format, value.encode(), usedforsecurity=False).hexdigest()
    raise ValueError(f"unknown identity format {identity_format!r}")


def accepted_identities(system: PartnerSystem, subject: Subject) -> list[tuple[str, str, str]]:
    """(type as the partner names it, format, encoded value) for each of the subject's
    identities the partner accepts, without repeats."""
    out: dict[tuple[str, str, str], None] = {}
    for accepted in system.identities:
        for identity in subject.identities:
            if identity.type is accepted.type:
                kind = accepted.as_type or accepted.type.value
                value = encode_identity(identity.value, accepted.format)
                out[(kind, accepted.format, value)] = None
    return list(out)


# -- headers, retries, messages --------------------------------------------------------------
def header_value(headers: HeaderSource, names: Sequence[str]) -> str | None:
    """The one value of the first of `names` present (case-insensitive). Two different
    values of one header are ambiguous: `Untrusted`."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    found: dict[str, set[str]] = {}
    for key, value in items:
        found.setdefault(key.lower(), set()).add(value)
    for name in names:
        values = found.get(name.lower())
        if values:
            if len(values) > 1:
                raise Untrusted(f"more than one {name} header")
            return next(iter(values))
    return None


def exponential_backoff(base: float = 0.5, cap: float = 30.0) -> Backoff:
    """Full jitter: a uniform delay in [0, min(cap, base * 2**(attempt - 1))]."""

    def delay(attempt: int) -> float:
        return random.uniform(0.0, min(cap, base * 2 ** (attempt - 1)))

    return delay


def scrub_message(text: str, secrets: Sequence[str], limit: int = _MAX_MESSAGE) -> str:
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = re.sub(re.escape(secret), "[identity]", text, flags=re.IGNORECASE)
    text = _EMAILISH.sub("[redacted]", text)
    text = _PHONEISH.sub("[redacted]", text)
    return clip_message(text, limit)


_PLAIN_CODE = re.compile(r"[a-z_]+(?:[.-][a-z_]+)*")


def _shown_code(code: int | str | None) -> str | None:
    """A partner's error code as an error message may show it: a number, or a plain
    lower-case word of at most 40 letters (no digits, no `@`: not an identity); else None.
    A code the scrubber changed held an identity, and is not shown either."""
    if isinstance(code, int) and not isinstance(code, bool):
        return str(code)
    if isinstance(code, str) and len(code) <= 40 and _PLAIN_CODE.fullmatch(code):
        return code
    return None


def clip_message(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
