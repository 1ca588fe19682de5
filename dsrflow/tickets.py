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
from typing import Annotated, Any

import phonenumbers
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from dsrflow.identities import Identity
from dsrflow.model import DEFAULT_PHONE_REGIONS, Regime, RequestType

MAX_TICKET_BYTES = 64 * 1024
TicketId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
Category = Annotated[str, Field(pattern=r"^[a-z_]{1,64}$")]
CorrectionTarget = Annotated[
    str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
]


class Verification(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Annotated[str, Field(min_length=1, max_length=64)]
    verified_at: AwareDatetime | None = None

    @field_validator("verified_at")
    @classmethod
    def _not_in_future(cls, value: datetime | None) -> datetime | None:
        # A future verification would start a clock (UK GDPR) months from now.
        if value is not None and value > datetime.now(UTC):
            raise ValueError("in the future")
        return value


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
    channel: Annotated[str, Field(min_length=1, max_length=64)] = "app"
    received_at: AwareDatetime
    country: Annotated[str, Field(min_length=2, max_length=2)] | None = Field(
        default=None, description="the subject's country (ISO 3166 alpha-2): where "
        "phone numbers written without a country code are read"
    )
    # The region the identities were read in (the country, else the regime's default):
    # set by `parse_ticket`, never by the sender.
    _phone_region: str | None = PrivateAttr(default=None)

    @field_validator("country")
    @classmethod
    def _known_country(cls, value: str | None) -> str | None:
        return None if value is None else _country(value)

    @field_validator("received_at")
    @classmethod
    def _not_in_future(cls, value: datetime) -> datetime:
        if value > datetime.now(UTC):
            raise ValueError("received_at is in the future")
        return value

    @model_validator(mode="after")
    def _type_specific(self) -> Ticket:
        if self.type is RequestType.CONSENT_WITHDRAWAL and not self.scope:
            raise ValueError("scope: consent_withdrawal needs the categories it withdraws")
        if self.type is RequestType.RECTIFICATION and not self.corrections:
            raise ValueError("corrections: rectification needs at least one correction")
        if self.corrections and self.type is not RequestType.RECTIFICATION:
            raise ValueError("corrections: only rectification requests carry corrections")
        verified_at = self.verification.verified_at if self.verification else None
        if verified_at is not None and verified_at < self.received_at:
            raise ValueError("verification.verified_at: before received_at")
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


def parse_ticket(
    raw: bytes | str | dict[str, Any],
    phone_regions: Mapping[Regime, str] = DEFAULT_PHONE_REGIONS,
) -> Ticket | Rejection:
    """A ticket, or why not. Phone numbers written without a country code are read in the
    ticket's `country`, else in the regime's entry of `phone_regions`, else refused."""
    if isinstance(raw, bytes | str):
        try:
            body = raw.encode("utf-8") if isinstance(raw, str) else raw
        except UnicodeEncodeError:
            return Rejection("not valid JSON: not UTF-8 text")
        if len(body) > MAX_TICKET_BYTES:
            return Rejection(f"ticket is {len(body)} bytes; the limit is {MAX_TICKET_BYTES}")
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            return Rejection(f"not valid JSON: {exc.msg}")
        except UnicodeDecodeError:
            return Rejection("not valid JSON: not UTF-8 text")
        except RecursionError:
            return Rejection("JSON nested too deeply")
    else:
        data = raw
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


def _readable(data: dict[str, Any]) -> dict[str, str | None]:
    """The non-personal fields that pass their own validation, for the rejection record."""
    out: dict[str, str | None] = {}
    field_checks: dict[str, Any] = {
        "ticket_id": TicketId,
        "type": RequestType,
        "regime": Regime,
        "channel": Annotated[str, Field(min_length=1, max_length=64)],
    }
    from pydantic import TypeAdapter

    for name, annotation in field_checks.items():
        try:
            value = TypeAdapter(annotation).validate_python(data.get(name))
        except ValidationError:
            continue
        out[name] = str(value)
    return out
