"""Subject identities, normalized on entry so that look-ups match however a value was typed."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_PHONE_REGION = "CN"
MAX_IDENTITY_LENGTH = 320  # RFC 5321's longest address; nothing legitimate is longer


class IdentityType(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    USER_ID = "user_id"
    DEVICE_ID = "device_id"
    THIRD_PARTY = "third_party"  # "<provider>:<openid>", e.g. "wechat:oAbC123"


class IdentityError(ValueError):
    pass


def normalize_email(raw: str) -> str:
    value = raw.strip().casefold()
    local, sep, domain = value.partition("@")
    if not sep or not local or not domain or "@" in domain or "." not in domain:
        raise IdentityError("not an email address")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise IdentityError("an email address cannot contain white space or control characters")
    if len(value) > MAX_IDENTITY_LENGTH:
        raise IdentityError(f"longer than {MAX_IDENTITY_LENGTH} characters once case-folded")
    return value


def normalize_phone(raw: str, region: str = DEFAULT_PHONE_REGION) -> str:
    """E.164, e.g. '138 0013 8000' -> '+8613800138000'."""
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        # The library's message describes the problem, never the number.
        raise IdentityError(f"not a phone number: {exc}") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise IdentityError("not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def phone_variants(e164: str) -> list[str]:
    """The spellings a database may hold for one number: E.164, national, with and without
    the country code, as digits only."""
    parsed = phonenumbers.parse(e164, None)
    # The national significant number keeps Italy's leading zero; the national format
    # adds a trunk prefix where the country dials one (Beijing landlines: 010…).
    national = phonenumbers.national_significant_number(parsed)
    trunk = "".join(
        c for c in phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
        if c.isdigit()
    )
    cc = str(parsed.country_code)
    return list(dict.fromkeys([e164, national, trunk, cc + national, "00" + cc + national]))


def normalize_opaque(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise IdentityError("empty")
    if any(ord(c) < 32 for c in value):
        raise IdentityError("control characters are not allowed")
    return value


def normalize_third_party(raw: str) -> str:
    provider, sep, openid = raw.strip().partition(":")
    if not sep or not provider.strip() or not openid.strip():
        raise IdentityError("expected '<provider>:<id>', e.g. 'wechat:oAbC123'")
    return f"{provider.strip().casefold()}:{normalize_opaque(openid)}"


def normalize(kind: IdentityType, raw: str, phone_region: str = DEFAULT_PHONE_REGION) -> str:
    if len(raw) > MAX_IDENTITY_LENGTH:
        raise IdentityError(f"longer than {MAX_IDENTITY_LENGTH} characters")
    match kind:
        case IdentityType.EMAIL:
            return normalize_email(raw)
        case IdentityType.PHONE:
            return normalize_phone(raw, phone_region)
        case IdentityType.THIRD_PARTY:
            return normalize_third_party(raw)
        case IdentityType.USER_ID | IdentityType.DEVICE_ID:
            return normalize_opaque(raw)
    raise IdentityError(f"unknown identity type {kind!r}")  # pragma: no cover


class Identity(BaseModel):
    """One normalized identity of a subject. Construct through the model so that
    normalization can never be skipped."""

    model_config = ConfigDict(frozen=True)

    type: IdentityType
    value: Annotated[str, Field(min_length=1, max_length=MAX_IDENTITY_LENGTH)]

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        if isinstance(data, dict) and "type" in data and isinstance(data.get("value"), str):
            try:
                kind = IdentityType(data["type"])
            except ValueError:
                return data  # the field validator reports the unknown type
            try:
                return {**data, "value": normalize(kind, data["value"])}
            except IdentityError as exc:
                raise ValueError(f"{kind.value}: {exc}") from exc
        return data

    def variants(self) -> list[str]:
        """Values to look for in a store that was not normalized on write."""
        if self.type is IdentityType.PHONE:
            return phone_variants(self.value)
        return [self.value]


class Subject(BaseModel):
    """Everything dsrflow knows of one data subject within one request. Lives only in
    memory (decrypted from the ledger for the duration of a task)."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    identities: tuple[Identity, ...]

    def values(self, kind: IdentityType) -> list[str]:
        return [i.value for i in self.identities if i.type is kind]
