"""The ticket schema (docs/tickets.md) and its parser.

A ticket that fails validation is not an exception to the caller: it becomes a `Rejection`
that names the field and keeps whatever of the ticket could be read, so it can be recorded
and reported. Rejection reasons never quote the input (it may be personal data).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import phonenumbers
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from dsrflow.identities import Identity
from dsrflow.model import DEFAULT_PHONE_REGIONS, Regime, RequestType

MAX_TICKET_BYTES = 64 * 1024
# No request predates this; a date before it is a typo or a probe (year 1 cannot even be
# converted to UTC when its offset is east of Greenwich).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
# C0 controls, DEL, C1 controls and lone surrogates: refused in every string of a ticket,
# keys included. They hide text in terminals and logs, PostgreSQL cannot store a NUL, and
# no encoder writes a lone surrogate.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# RFC 3339 section 5.6, `date-time`: ASCII digits, `T` and an offset (`Z` or ±hh:mm).
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
TIMESTAMP_RULE = "an RFC 3339 date and time with an offset, as text: 2026-11-04T10:05:47+01:00"

TicketId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
Category = Annotated[str, Field(pattern=r"^[a-z_]{1,64}$")]
CorrectionTarget = Annotated[
    str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
]


def _printable(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("contains a control character or a lone surrogate")
    return value


def _rfc3339(value: Any) -> Any:
    # pydantic alone reads numbers and digit strings as Unix times and takes other ISO 8601
    # spellings: a ticket's times are one format, so a misread field is refused, not guessed.
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError(f"must be {TIMESTAMP_RULE}")
    return value


def _plausible(value: datetime) -> datetime:
    # Compared, never converted: converting year 1 or 9999 to UTC can overflow.
    if value < EARLIEST:
        raise ValueError("before 2000-01-01")
    # A future receipt or verification would start a clock (UK GDPR) months from now.
    if value > datetime.now(UTC):
        raise ValueError("in the future")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_plausible)]
Channel = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_printable)]


class Verification(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Annotated[str, Field(min_length=1, max_length=64)]
    verified_at: Timestamp | None = None


class GuardianRelation(StrEnum):
    PARENT = "parent"
    LEGAL_GUARDIAN = "legal_guardian"


class Guardian(BaseModel):
    """Someone acting for the subject (policy 7.x): who they are to the subject, their own
    identities (to reach them; never searched or erased as the subject's), and how their
    guardianship was verified (none yet: the request waits for it)."""

    model_config = ConfigDict(extra="forbid")
    relation: GuardianRelation
    identities: Annotated[list[Identity], Field(min_length=1, max_length=5)]
    verification: Verification | None = None

    @property
    def verified(self) -> bool:
        return self.verification is not None and self.verification.verified_at is not None


def _country(value: str) -> str:
    code = value.strip().upper()
    # phonenumbers knows every ISO 3166 alpha-2 country that has a numbering plan: the
    # only use dsrflow makes of a country is reading phone numbers.
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError("not an ISO 3166 alpha-2 country code with a telephone numbering plan")
    return code


class Ticket(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ticket_id: TicketId
    type: RequestType
    regime: Regime
    identities: Annotated[list[Identity], Field(min_length=1, max_length=20)]
    verification: Verification | None = None
    scope: Annotated[list[Category], Field(min_length=1, max_length=50)] | None = None
    corrections: Annotated[dict[CorrectionTarget, str], Field(max_length=50)] | None = Field(
        default=None, description="rectification: 'system.table.column' -> corrected value"
    )
    channel: Channel = "app"
    received_at: Timestamp
    guardian: Guardian | None = Field(
        default=None, description="a parent or legal guardian acting for the subject"
    )
    country: Annotated[str, Field(min_length=2, max_length=2)] | None = Field(
        default=None, description="the subject's country (ISO 3166 alpha-2): where "
        "phone numbers written without a country code are read"
    )
    # The region the identities were read in (the country, else the regime's default):
    # set by `parse_ticket`, never by the sender.
    _phone_region: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _no_control_characters(cls, data: Any) -> Any:
        found = _control_characters(data)
        if found:
            raise ValueError("; ".join(f"{_where(loc)}: {what}" for loc, what in found[:3]))
        return data

    @field_validator("country")
    @classmethod
    def _known_country(cls, value: str | None) -> str | None:
        return None if value is None else _country(value)

    @model_validator(mode="after")
    def _type_specific(self) -> Ticket:
        if self.type is RequestType.CONSENT_WITHDRAWAL and not self.scope and not self.guardian:
            # A guardian's withdrawal is of everything (policy 7.3): no scope needed.
            raise ValueError("scope: consent_withdrawal needs the categories it withdraws")
        if self.type is RequestType.RECTIFICATION and not self.corrections:
            raise ValueError("corrections: rectification needs at least one correction")
        if self.corrections and self.type is not RequestType.RECTIFICATION:
            raise ValueError("corrections: only rectification requests carry corrections")
        verified_at = self.verification.verified_at if self.verification else None
        if verified_at is not None and verified_at < self.received_at:
            raise ValueError("verification.verified_at: before received_at")
        if self.guardian is not None:
            vouched = self.guardian.verification
            if vouched and vouched.verified_at and vouched.verified_at < self.received_at:
                raise ValueError("guardian.verification.verified_at: before received_at")
            theirs = set(self.identities)
            for i, identity in enumerate(self.guardian.identities):
                if identity in theirs:
                    # Searched as the subject's, it would erase the guardian's own data.
                    raise ValueError(
                        f"guardian.identities.{i}: is also one of the subject's identities"
                    )
        return self

    @property
    def verified(self) -> bool:
        return self.verification is not None and self.verification.verified_at is not None

    @property
    def phone_region(self) -> str | None:
        return self._phone_region


@dataclass(frozen=True)
class Rejection:
    reason: str
    ticket_id: str | None = None
    type: str | None = None
    regime: str | None = None
    channel: str | None = None


# Reasons about the ticket as a whole (it is not a JSON object at all): they name no field.
WHOLE_TICKET_REASONS = (
    "not valid JSON", "JSON nested too deeply", "ticket is ", "a ticket must be a JSON object",
)


def _decode(raw: bytes | str) -> Any:
    """The JSON document in `raw`, or a Rejection saying why there is none."""
    try:
        body = raw.encode("utf-8") if isinstance(raw, str) else raw
    except UnicodeEncodeError:
        return Rejection("not valid JSON: not UTF-8 text")
    if len(body) > MAX_TICKET_BYTES:
        return Rejection(f"ticket is {len(body)} bytes; the limit is {MAX_TICKET_BYTES}")
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        return Rejection(f"not valid JSON: {exc.msg}")
    except UnicodeDecodeError:
        return Rejection("not valid JSON: not UTF-8 text")
    except RecursionError:
        return Rejection("JSON nested too deeply")
    except ValueError:
        # Python reads at most 4,300 digits of an integer (CVE-2020-10735).
        return Rejection("not valid JSON: a number too long to read")


def parse_ticket(
    raw: bytes | str | dict[str, Any],
    phone_regions: Mapping[Regime, str] = DEFAULT_PHONE_REGIONS,
) -> Ticket | Rejection:
    """A ticket, or why not. Phone numbers written without a country code are read in the
    ticket's `country`, else in the regime's entry of `phone_regions`, else refused."""
    data = _decode(raw) if isinstance(raw, bytes | str) else raw
    if isinstance(data, Rejection):
        return data
    if not isinstance(data, dict):
        return Rejection("a ticket must be a JSON object")
    region = _phone_region(data, phone_regions)
    try:
        ticket = Ticket.model_validate(data, context={"phone_region": region})
    except ValidationError as exc:
        return Rejection(_reason(exc), **_readable(data))
    ticket._phone_region = region
    return ticket


def _phone_region(data: dict[str, Any], phone_regions: Mapping[Regime, str]) -> str | None:
    """Where the ticket's phone numbers are read, from its raw fields (validated again with
    the rest of the ticket: a bad country is reported there)."""
    country = data.get("country")
    if country is not None:
        try:
            return _country(country) if isinstance(country, str) else None
        except ValueError:
            return None
    regime = data.get("regime")
    if not isinstance(regime, str) or regime not in Regime.__members__.values():
        return None
    return phone_regions.get(Regime(regime))


# A location part that a reason may name: a list index, or a plain field-like name. Other
# keys were chosen by the sender (an email as a correction's target, say) and may be
# personal data, so they are not repeated.
_NAMEABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")


def _where(loc: tuple[int | str, ...]) -> str:
    parts = [
        str(p) if isinstance(p, int) or _NAMEABLE.fullmatch(p) else "<key>" for p in loc
    ]
    return ".".join(parts) or "ticket"


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        message = str(err["msg"]).removeprefix("Value error, ")
        # A check across fields names its field in the message itself.
        parts.append(f"{_where(err['loc'])}: {message}" if err["loc"] else message)
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _control_characters(data: Any) -> list[tuple[tuple[int | str, ...], str]]:
    """Where a string of `data`, or a key, holds a control character or a lone surrogate,
    in document order. Iterative: a deeply nested dict handed in-process must not recurse
    out of the stack."""
    found: list[tuple[tuple[int | str, ...], str]] = []
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), data)]
    while stack:
        loc, node = stack.pop()
        if isinstance(node, str):
            if _CONTROL.search(node):
                found.append((loc, "contains a control character or a lone surrogate"))
        elif isinstance(node, dict):
            for key, value in reversed(list(node.items())):
                if isinstance(key, str) and _CONTROL.search(key):
                    found.append(((*loc, key), "its name contains a control character or a "
                                  "lone surrogate"))
                stack.append(((*loc, key), value))
        elif isinstance(node, list | tuple):
            stack.extend(((*loc, i), v) for i, v in reversed(list(enumerate(node))))
    return found


_READABLE: dict[str, TypeAdapter[Any]] = {
    "ticket_id": TypeAdapter(TicketId),
    "type": TypeAdapter(RequestType),
    "regime": TypeAdapter(Regime),
    "channel": TypeAdapter(Channel),
}


def _readable(data: dict[str, Any]) -> dict[str, str | None]:
    """The non-personal fields that pass their own validation, for the rejection record."""
    out: dict[str, str | None] = {}
    for name, adapter in _READABLE.items():
        try:
            value = adapter.validate_python(data.get(name))
        except ValidationError:
            continue
        out[name] = str(value)
    return out


def rejection_of(raw: bytes | str | dict[str, Any], reason: str) -> Rejection:
    """A rejection of `raw` for `reason`, with whatever non-personal fields can be read
    (for a ticket that broke something unexpected). Never raises."""
    try:
        data = _decode(raw) if isinstance(raw, bytes | str) else raw
        return Rejection(reason, **_readable(data)) if isinstance(data, dict) else Rejection(reason)
    except Exception:
        return Rejection(reason)
