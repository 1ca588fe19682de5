"""Subject identities, normalized on entry so that look-ups match however a value was typed.

Phone numbers are read by region, never guessed: a number written nationally
(`(415) 555-2671`, `020 7946 0018`) means different people in different countries, so it
is read in the subject's region (the ticket's `country`, else the regime's default from
settings) and refused where there is none. The same rule decides which national spellings
a store is searched for: a national spelling of a foreign number is someone else's number.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from enum import StrEnum
from typing import Annotated, Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

MAX_IDENTITY_LENGTH = 320  # RFC 5321's longest address; nothing legitimate is longer
NATIONAL_NEEDS_REGION = (
    "a number written without its country code cannot be read here (no country for the "
    "subject): write it with + and the country code, or give the ticket's country"
)
# What a phone number is written with: digits (ASCII or full-width, as Chinese input
# methods type them), a leading plus, and the usual separators. phonenumbers itself reads
# far more (letters as keypad digits, `1380013OOO2`; trailing text, `13800130002%`), and a
# value it would quietly turn into somebody's number is refused instead.
_PHONE_TEXT = re.compile(r"[(\uff08]?[+\uff0b]?[0-9\uff10-\uff19 ()\-.\uff08\uff09\uff0d\u3000]+")
# Addresses that many people share at once (behind NAT, on loopback, carrier-grade NAT,
# multicast): as an identity they would match everyone's lines. Documentation ranges stay
# allowed; they stand in for public addresses in examples and tests.
_SHARED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
    )
)


class IdentityType(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    USER_ID = "user_id"
    DEVICE_ID = "device_id"
    THIRD_PARTY = "third_party"  # "<provider>:<openid>", e.g. "wechat:oAbC123"
    IP = "ip"  # an IPv4 or IPv6 address, as `ipaddress` writes it


# Identities that name one person's account: a device id or an IP address is often several
# people's, so it never makes a row, an account or an earlier request someone's.
ACCOUNT_GRADE = frozenset(
    {IdentityType.USER_ID, IdentityType.EMAIL, IdentityType.PHONE, IdentityType.THIRD_PARTY}
)


class IdentityError(ValueError):
    pass


def normalize_email(raw: str) -> str:
    """An address as `email-validator` reads it (syntax only, no DNS: `a@.com`, `a@b..com`
    and `a@-b.com` are refused, internationalized domains accepted), its local part
    case-folded. Domains come back lower-case, an IDNA domain in Unicode."""
    try:
        parsed = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError:
        # The library's message can quote the offending characters: it is not repeated.
        raise IdentityError("not an email address") from None
    value = f"{parsed.local_part.casefold()}@{parsed.domain}"
    if len(value) > MAX_IDENTITY_LENGTH:
        raise IdentityError(f"longer than {MAX_IDENTITY_LENGTH} characters once case-folded")
    # Case folding can lengthen a local part ('ﬃ' is 'ffi') past what the validator allows:
    # refused now rather than accepted once and refused when the stored value is read again.
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        raise IdentityError("not an email address once case-folded") from None
    return value


def normalize_phone(raw: str, region: str | None = None) -> str:
    """E.164, e.g. '138 0013 8000' read in CN -> '+8613800138000'. A number written
    without its country code needs `region`; without one it is refused, never guessed."""
    if not _PHONE_TEXT.fullmatch(raw.strip()):
        raise IdentityError("not a phone number: only digits, a leading +, spaces and - . ( )")
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        no_code = exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE
        if region is None and no_code and not any(c in raw for c in "+\uff0b"):
            raise IdentityError(NATIONAL_NEEDS_REGION) from exc
        # The library's message describes the problem, never the number.
        raise IdentityError(f"not a phone number: {exc}") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise IdentityError("not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def reads_nationally(e164: str, region: str | None) -> bool:
    """Whether a national spelling (no country code) of `e164` means this number to a
    store written in `region`: only when the region dials the same country code (the US
    and Canada share +1; the UK, Guernsey, Jersey and Man share +44)."""
    if region is None:
        return False
    code = phonenumbers.country_code_for_region(region)
    return code != 0 and phonenumbers.parse(e164, None).country_code == code


def phone_variants(e164: str, region: str | None = None) -> list[str]:
    """The spellings a store may hold for one number: E.164 and the country code written
    as digits (`8613800138000`, `008613800138000`) always; the national spellings
    (`13800138000`, with a trunk prefix `02079460958`) only where they mean this number in
    the subject's `region` — `020 7946 0018` is London to a British store and Guangzhou
    to a Chinese one."""
    parsed = phonenumbers.parse(e164, None)
    # The national significant number keeps Italy's leading zero; the national format
    # adds a trunk prefix where the country dials one (Beijing landlines: 010…).
    national = phonenumbers.national_significant_number(parsed)
    cc = str(parsed.country_code)
    spellings = [e164, cc + national, "00" + cc + national]
    if reads_nationally(e164, region):
        trunk = "".join(
            c for c in phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
            if c.isdigit()
        )
        spellings[1:1] = [national, trunk]
    return list(dict.fromkeys(spellings))


def normalize_ip(raw: str) -> str:
    """An IPv4 or IPv6 address as `ipaddress` writes it (IPv6 compressed and lower-case;
    an IPv4-mapped IPv6 address as the IPv4 address it carries). Addresses many people
    share at once (private, loopback, link-local, carrier-grade NAT, multicast) are
    refused: as an identity they would match everyone behind them."""
    value = raw.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    if "%" in value:
        raise IdentityError("an IP address with a zone (%…) names an interface, not a person")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise IdentityError("not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in _SHARED_NETWORKS):
        raise IdentityError(
            "a private, loopback, link-local, shared or multicast address is used by many "
            "people at once: it cannot identify one"
        )
    return str(address)


def ip_variants(value: str) -> list[str]:
    """The spellings a database column may hold for one address: IPv6 compressed and
    exploded, in either case; IPv4 also as an IPv4-mapped IPv6 address."""
    address = ipaddress.ip_address(value)
    if isinstance(address, ipaddress.IPv4Address):
        return [value, f"::ffff:{value}"]
    forms = [address.compressed, address.exploded]
    return list(dict.fromkeys(forms + [f.upper() for f in forms]))


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


def normalize(kind: IdentityType, raw: str, phone_region: str | None = None) -> str:
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
        case IdentityType.IP:
            return normalize_ip(raw)
    raise IdentityError(f"unknown identity type {kind!r}")  # pragma: no cover


# -- what a value may be used for -------------------------------------------------------------
# A user id is compared with key columns (integer or text) and sent to partners: letters,
# ASCII digits and `. _ : @ -`, starting with a letter or digit, or a negative integer.
# `²` and `٣` are digits to `str.isdigit` and to `int()`, not to a database.
MAX_USER_ID_LENGTH = 128
_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")
_INTEGER = re.compile(r"-?[0-9]+")
_INT64 = range(-(2**63), 2**63)


def user_id_problem(value: str) -> str | None:
    """Why `value` cannot be a user id, or None if it can (never quotes the value). One that
    is all digits must fit a signed 64-bit key column: a longer one would match no row of
    an integer key and the erasure would report "nothing found" for an account it never
    looked at."""
    if len(value) > MAX_USER_ID_LENGTH:
        return f"longer than {MAX_USER_ID_LENGTH} characters"
    if _INTEGER.fullmatch(value):
        return None if int(value) in _INT64 else "a number outside the signed 64-bit range"
    if not _USER_ID.fullmatch(value):
        return ("not a user id: ASCII letters, digits and . _ : @ -, starting with a letter "
                "or digit (or a negative integer)")
    return None


def unsafe_reason(value: str) -> str | None:
    """Why a value cannot be put into an object key or a file path, or None if it can
    (never quotes the value): it could leave its place (`a/b`, `..`) or name nothing."""
    if not value.strip():
        return "is empty"
    if "/" in value or "\\" in value:
        return "contains a path separator"
    if ".." in value or value == ".":
        return "is or contains a relative path step (dot or dot-dot)"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        return "contains a control character or a lone surrogate"
    return None


class Identity(BaseModel):
    """One normalized identity of a subject. Construct through the model so that
    normalization can never be skipped. A phone number written nationally is read in the
    region given as validation context (`{"phone_region": "GB"}`, see `Identity.read`);
    without one it is refused."""

    # Extra keys are refused, not dropped: a ticket's `{"type", "value", "region"}` must not
    # lose a constraint its sender thought they gave.
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: IdentityType
    value: Annotated[str, Field(min_length=1, max_length=MAX_IDENTITY_LENGTH)]

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and "type" in data and isinstance(data.get("value"), str):
            try:
                kind = IdentityType(data["type"])
            except ValueError:
                return data  # the field validator reports the unknown type
            region = (info.context or {}).get("phone_region")
            try:
                return {**data, "value": normalize(kind, data["value"], region)}
            except IdentityError as exc:
                raise ValueError(f"{kind.value}: {exc}") from exc
        return data

    @classmethod
    def read(cls, kind: IdentityType, raw: str, phone_region: str | None = None) -> Identity:
        """A value as a store or a person wrote it, read in `phone_region` (phones)."""
        return cls.model_validate({"type": kind, "value": raw},
                                  context={"phone_region": phone_region})

    @classmethod
    def stored(cls, kind: str, value: str) -> Identity:
        """An identity the ledger stored from a validated `Identity`: normalized when it
        was made, so not normalized again (each read of a batch's subjects would parse
        every email and phone number once more: most of the ledger's CPU in a run)."""
        return cls.model_construct(type=IdentityType(kind), value=value)

    def variants(self, phone_region: str | None = None) -> list[str]:
        """Values to look for in a store that was not normalized on write."""
        if self.type is IdentityType.PHONE:
            return phone_variants(self.value, phone_region)
        if self.type is IdentityType.IP:
            return ip_variants(self.value)
        return [self.value]


class Subject(BaseModel):
    """Everything dsrflow knows of one data subject within one request. Lives only in
    memory (decrypted from the ledger for the duration of a task)."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    identities: tuple[Identity, ...]
    # Where national-format phone numbers are read, and so which national spellings are
    # the subject's: the ticket's country, else the regime's default; None for neither.
    phone_region: str | None = None

    def values(self, kind: IdentityType) -> list[str]:
        return [i.value for i in self.identities if i.type is kind]
