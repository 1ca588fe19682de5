"""Logs connector: JSON-lines and plain-text logs, local files (glob) or S3 prefixes, plain
or gzip, described by a `kind: logs` system of the data map.

The full specification: `docs/logs-erasure.md`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import glob as globmod
import gzip
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, unquote_to_bytes

import phonenumbers

from connectors.base import ConnectorConfigError, Outcome, Records, Scope, resolve_endpoint
from connectors.s3 import delete_versions, key_versions, versioned
from dsrflow.crypto import Pseudonymizer
from dsrflow.datamap import Action, LogSource, LogsSystem
from dsrflow.identities import Identity, IdentityType, Subject

_hs: Any
try:  # Hyperscan is the fast path; without it the same literals go through `re`.
    import hyperscan as _hs
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    _hs = None

BLOCK = 1 << 20  # bytes read per step: large enough for C to dominate, small for the cache
TMP_SUFFIX = ".dsrflow-tmp"
PENDING_SUFFIX = ".dsrflow-pending"  # the new version of a file being rewritten in place
GZIP_LEVEL = 6
MAX_PHONE_DIGITS = 17  # 00 + a 3-digit country code + 12 digits
SHORT_ID = 6  # identifiers shorter than this are looked for as whole tokens only
_GZIP_MAGIC = b"\x1f\x8b"
# A glob match whose stat fails with one of these is not a file: a link to nothing.
_NO_FILE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})

# -- the view the prefilter scans --------------------------------------------------------
_SPACE = 0x20
_TOKEN_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_@")


def _view_byte(c: int) -> int:
    if 0x41 <= c <= 0x5A:  # A-Z
        return c + 0x20
    if c == 0x25:  # '%': %40 reads as @40, so `local@` matches both spellings
        return 0x40
    return c if c in _TOKEN_BYTES else _SPACE


VIEW = bytes(_view_byte(c) for c in range(256))


def view_of(text: str) -> bytes:
    return text.encode("utf-8").translate(VIEW)


# -- the precise patterns (stage 2): fixed, whatever the batch ---------------------------
_HEX_BEFORE = r"(?<=%[0-9A-Fa-f]{2})"  # right after a percent escape (`%3D` of `=`)
_EMAIL = (
    rf"(?:{_HEX_BEFORE}|(?<![A-Za-z0-9._%+-]))"
    r"((?:[A-Za-z0-9._+-]|%2[Bb])+)(?:@|%40)"
    r"([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(?![A-Za-z0-9-]|\.[A-Za-z0-9-])"
)
# A group of a phone number: digits, or an area code or trunk prefix in parentheses
# (`(415) 555-2671`, `+44 (0)20 7946 0018`), which needs no separator next to it.
_PHONE_GROUP = r"(?:[0-9]+|\([0-9]{1,4}\))"
_PHONE = (
    rf"(?:{_HEX_BEFORE}|(?<![A-Za-z0-9]))(?:\+|%2[Bb])?{_PHONE_GROUP}"
    rf"(?:(?:[ +-]|%20|(?<=\))|(?=\()){_PHONE_GROUP})*(?![A-Za-z0-9])"
)
_UID_KEY = (
    rf"(?:{_HEX_BEFORE}|(?<![A-Za-z0-9_]))(?:uid|userid|user_id|user-id|users?|account_?id)"
    r"(?:[\"']?\s*(?:[=:]|%3[Dd])\s*[\"']?|/|\s+)"
    r"([0-9]+)(?![A-Za-z0-9_]|[.-][A-Za-z0-9])"
)
_TOKEN = r"(?<![A-Za-z0-9_.-])[A-Za-z0-9_.-]+"
_GROUPS = r"%20|\([0-9]+\)|[0-9]+"
# IP addresses. A candidate is a whole token (never a piece of `11.2.3.45`, `1.2.3.4.5`,
# `v1.2.3.4`), read by `ipaddress` and looked up normalized. IPv4: dotted (optionally with
# a /prefix), dashed inside a host name (`ip-203-0-113-7.ec2.internal`: reverse DNS spells
# the address so), or reversed before `.in-addr.arpa`. A dashed name that reverses the
# address (`7-113-0-203.isp`) is read forward, as the address it spells.
_IP4 = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
_IPV4 = (
    rf"(?:{_HEX_BEFORE}|(?<![A-Za-z0-9_]))(?<![0-9]\.)(?:"
    rf"(?P<arpa>{_IP4})\.(?i:in-addr\.arpa)(?![A-Za-z0-9_-])"
    rf"|(?P<dot>{_IP4})(?!\.(?i:in-addr)\.)(?:/(?P<len>[0-9]{{1,3}})(?![0-9]))?"
    r"(?![A-Za-z0-9_]|[.-][0-9])"
    r"|(?P<dash>[0-9]{1,3}(?:-[0-9]{1,3}){3})(?![A-Za-z0-9_]|[.-][0-9])"
    r")"
)
# IPv6: hex groups and colons (`:` or `%3A`), an IPv4 tail, brackets and ports outside the
# token. A key glued on with a colon (`ip:2001:db8::1`) is not part of the address, unless
# the whole reads as one (`face:b00c::1`).
_HEXTET = r"[0-9A-Fa-f]{0,4}"
_COLON = r"(?::|%3[Aa])"
_IPV6 = (
    rf"(?:{_HEX_BEFORE}|(?<![0-9A-Za-z_.:]))"
    rf"(?:(?P<key>[A-Za-z_][A-Za-z0-9_.-]*){_COLON})?"
    rf"(?P<addr>{_HEXTET}(?:{_COLON}{_HEXTET}){{2,7}}(?:(?:(?<=:)|(?<=%3[Aa])){_IP4})?)"
    r"(?:/(?P<len>[0-9]{1,3})(?![0-9]))?"
    r"(?![0-9A-Za-z_:]|\.[0-9A-Za-z]|%3[Aa])"
)
# The reverse-DNS name of an IPv6 address (32 nibbles, last first) and the dashed form
# Windows writes for UNC paths (`2001-db8--1.ipv6-literal.net`).
_ARPA6 = r"(?<![0-9A-Za-z_.-])(?P<nib>(?:[0-9A-Fa-f]\.){32})(?i:ip6\.arpa)(?![A-Za-z0-9_-])"
_DASH6 = (
    rf"(?<![0-9A-Za-z_.-])(?P<addr>{_HEXTET}(?:-{_HEXTET}){{2,7}})"
    r"\.(?i:ipv6-literal\.net)(?![A-Za-z0-9_-])"
)


@dataclass(frozen=True)
class _Patterns:
    email: re.Pattern[Any]
    phone: re.Pattern[Any]
    uid_key: re.Pattern[Any]
    token: re.Pattern[Any]
    groups: re.Pattern[Any]
    ipv4: re.Pattern[Any]
    ipv6: re.Pattern[Any]
    arpa6: re.Pattern[Any]
    dash6: re.Pattern[Any]


def _compile(as_bytes: bool) -> _Patterns:
    def c(p: str, flags: int = 0) -> re.Pattern[Any]:
        return re.compile(p.encode() if as_bytes else p, flags | re.ASCII)

    return _Patterns(
        c(_EMAIL), c(_PHONE), c(_UID_KEY, re.IGNORECASE), c(_TOKEN), c(_GROUPS),
        c(_IPV4), c(_IPV6), c(_ARPA6), c(_DASH6),
    )


_BYTES = _compile(True)
_STR = _compile(False)


class LogsError(RuntimeError):
    """A log file or object could not be read or rewritten. The message names the system,
    the source, the file and the operation, never a line or an identity."""


class LogsConfigError(ConnectorConfigError):
    """The data map's logs system cannot be used as configured."""


# -- the batch's identities --------------------------------------------------------------
@dataclass(frozen=True)
class _Owner:
    """One identity of the batch and the requests it belongs to (usually one)."""

    identity: Identity
    request_ids: tuple[str, ...]


@dataclass
class _Index:
    """Normalized look-up keys of every identity in the batch.

    A key is owned by the requests whose subject it spells: a national spelling of a
    phone number only by the requests whose region reads it as that number, and a key
    that two identities spell (`2079460018` is London to a GB subject and Guangzhou to a
    CN one) by the requests of both."""

    emails: dict[str, _Owner] = field(default_factory=dict)
    phones: dict[str, _Owner] = field(default_factory=dict)  # phone_variants, by region
    user_ids: dict[str, _Owner] = field(default_factory=dict)
    device_ids: dict[str, _Owner] = field(default_factory=dict)  # case-folded
    openids: dict[str, _Owner] = field(default_factory=dict)  # third_party, provider dropped
    ips: dict[str, _Owner] = field(default_factory=dict)  # as normalize_ip writes them
    country_codes: dict[str, str] = field(default_factory=dict)  # E.164 -> "86"
    phone_literals: set[bytes] = field(default_factory=set)
    ip_literals: set[bytes] = field(default_factory=set)

    @classmethod
    def build(cls, subjects: Sequence[Subject], store_region: str | None = None) -> _Index:
        """`store_region`: where the logs' national phone numbers are written (the
        system's `phone_region`); without one, each subject's own region."""
        index = cls()
        forms: dict[str, _PhoneForms] = {}  # one parse per number, however many subjects
        shared: dict[tuple[str, str], dict[str, Identity]] = {}  # keys of several requests
        for subject in subjects:
            rid = subject.request_id
            region = store_region or subject.phone_region
            for ident in subject.identities:
                owner = _Owner(ident, (rid,))
                for table, key in index._keys(ident, region, forms):
                    # A batch may repeat a request: its first identity keeps the key.
                    held = getattr(index, table).setdefault(key, owner)
                    if rid not in held.request_ids:
                        claims = shared.setdefault((table, key), {held.request_ids[0]:
                                                                  held.identity})
                        claims.setdefault(rid, ident)
        owners: dict[tuple[int, tuple[str, ...]], _Owner] = {}
        for (table, key), claims in shared.items():
            rids = tuple(sorted(claims))
            ident = claims[rids[0]]  # the pseudonym written: the first request's
            merged = owners.get((id(ident), rids))
            if merged is None:
                merged = owners[(id(ident), rids)] = _Owner(ident, rids)
            getattr(index, table)[key] = merged
        return index

    def _keys(
        self, ident: Identity, region: str | None, forms: dict[str, _PhoneForms]
    ) -> list[tuple[str, str]]:
        match ident.type:
            case IdentityType.EMAIL:
                return [("emails", ident.value.casefold())]
            case IdentityType.PHONE:
                phone = forms.get(ident.value)
                if phone is None:
                    phone = forms[ident.value] = _PhoneForms.of(ident.value)
                    self.country_codes[ident.value] = phone.cc
                national = phone.reads_nationally(region)
                self.phone_literals.update(phone.literals(national))
                return [("phones", v) for v in phone.spellings(national)]
            case IdentityType.USER_ID:
                return [("user_ids", ident.value)]
            case IdentityType.DEVICE_ID:
                return [("device_ids", ident.value.casefold())]
            case IdentityType.THIRD_PARTY:
                return [("openids", ident.value.partition(":")[2])]
            case IdentityType.IP:
                self.ip_literals.update(_ip_literals(ident.value))
                return [("ips", ident.value)]
        return []  # pragma: no cover

    def literals(self, types: frozenset[IdentityType]) -> list[bytes]:
        """The prefilter's literals (in view form) for the identities of `types`."""
        out: set[bytes] = set()
        if IdentityType.EMAIL in types:
            for email in self.emails:
                out.update(_email_literals(email))
        if IdentityType.PHONE in types:
            out |= self.phone_literals
        if IdentityType.USER_ID in types:
            out.update(_id_literal(v) for v in self.user_ids)
        if IdentityType.DEVICE_ID in types:
            out.update(_id_literal(v) for v in self.device_ids)
        if IdentityType.THIRD_PARTY in types:
            out.update(_id_literal(v) for v in self.openids if v)
        if IdentityType.IP in types:
            out |= self.ip_literals
        return sorted(lit for lit in out if lit.strip())

    @functools.cached_property
    def shortest_phone(self) -> int:
        return min((len(v) for v in self.phones), default=0)

    @functools.cached_property
    def token_lengths(self) -> frozenset[int]:
        """Lengths of the identifiers looked for as tokens: other tokens are skipped."""
        return frozenset(len(v) for d in (self.user_ids, self.device_ids, self.openids) for v in d)


def _email_literals(email: str) -> list[bytes]:
    local, _, domain = email.rpartition("@")
    spellings = {local, quote(local, safe="")}
    out = []
    for spelling in spellings:
        lit = view_of(spelling) + b"@"
        if len(lit.replace(b" ", b"")) < 5:  # `a@` alone would flag every address
            out += [lit + view_of(domain), lit + b"40" + view_of(domain)]
        else:
            out.append(lit)
    return out


@functools.cache
def _dialling_code(region: str) -> int:
    return int(phonenumbers.country_code_for_region(region))


@dataclass(frozen=True)
class _PhoneForms:
    """What the logs may hold of one number, from one parse and one format (the cost that
    matters in a batch of 10,000)."""

    e164: str
    cc: str  # country code: "44"
    nsn: str  # national significant number: "2079460018"
    trunk: str  # the national format's digits, with a trunk prefix: "02079460018"
    grouped: str  # the nsn grouped as the country writes it: "20 7946 0018"
    national_view: bytes  # the national format as the view reads it: b"415  555 2671"

    @classmethod
    def of(cls, e164: str) -> _PhoneForms:
        parsed = phonenumbers.parse(e164, None)
        nsn = phonenumbers.national_significant_number(parsed)
        national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
        trunk = "".join(c for c in national if c.isdigit())
        groups = [g for g in re.split(r"[^0-9]+", national) if g]
        if groups and trunk != nsn and trunk.endswith(nsn):
            groups[0] = groups[0][len(trunk) - len(nsn):]  # "020 7946 0018" -> "20 7946 0018"
        grouped = " ".join(g for g in groups if g)
        if grouped.replace(" ", "") != nsn:
            grouped = nsn  # a format that does not spell the digits in order: no grouping
        return cls(e164, str(parsed.country_code), nsn, trunk, grouped,
                   view_of(national).strip())

    def reads_nationally(self, region: str | None) -> bool:
        """`dsrflow.identities.reads_nationally`, without parsing the number again."""
        return region is not None and _dialling_code(region) == int(self.cc) != 0

    def spellings(self, national: bool) -> list[str]:
        """`phone_variants(e164, region)`: the national spellings (national significant
        number, with a trunk prefix) only where `national`."""
        international = [self.e164, self.cc + self.nsn, "00" + self.cc + self.nsn]
        if not national:
            return international
        return list(dict.fromkeys([self.e164, self.nsn, self.trunk, *international[1:]]))

    def literals(self, national: bool) -> list[bytes]:
        """Literals that every spelling stage 2 reads as this number contains (in view
        form). The national significant number's digits are in every spelling written
        without groups (`+442079460018`, `00442079460018`, `%2B44…`, `+44 2079460018`,
        `02079460018`). Grouped spellings: where the number reads nationally, the nsn as
        grouped nationally (`20 7946 0018` is in `020 7946 0018` and `+44 20 7946 0018`)
        and the national format where it has parentheses (`415  555 2671` of
        `(415) 555-2671`); otherwise only grouped after the country code (`44 20 7946
        0018`, `44  0 20 7946 0018` of `+44 (0)20 …`, `1  415  555 2671`)."""
        digits = self.nsn.encode()
        grouped = self.grouped.encode()
        out = [digits]
        if national:
            out.append(grouped)
            if grouped not in self.national_view and digits not in self.national_view:
                out.append(self.national_view)
            return out
        cc = self.cc.encode()
        out.append(cc + b" " + grouped)
        prefix = self.trunk[: len(self.trunk) - len(self.nsn)]
        if prefix and self.trunk.endswith(self.nsn):
            out.append(cc + b"  " + prefix.encode() + b" " + grouped)  # the (0) of +44 (0)20
        elif grouped not in self.national_view and digits not in self.national_view:
            out.append(cc + b"  " + self.national_view)  # +1 (415) 555-2671
        return out


def _ip_literals(value: str) -> list[bytes]:
    """Literals for one address that the spellings stage 2 reads contain (in view form,
    where `.`, `:` and `-` read as spaces). IPv4 `203.0.113.7`: `203 0 113 7` (dotted,
    dashed, an IPv4-mapped IPv6 tail `::ffff:203.0.113.7`), `7 113 0 203` (in-addr.arpa)
    and the mapped hex (`ffff cb00 7107`, `ffff 102 304` and `ffff 0102 0304` for 1.2.3.4).
    IPv6: a run of groups that every spelling writes alike (`_ipv6_run`), with `:` and with
    `%3A` between them, and the nibbles of ip6.arpa."""
    if ":" not in value:  # IPv4, dotted as normalize_ip writes it
        octets = value.split(".")
        a, b, c, d = (int(o) for o in octets)
        hextets = [f"{a << 8 | b:04x}", f"{c << 8 | d:04x}"]  # as in ::ffff:cb00:7107
        return [" ".join(octets).encode(), " ".join(reversed(octets)).encode(),
                " ".join(["ffff", *hextets]).encode(),
                " ".join(["ffff", *(h.lstrip("0") or "0" for h in hextets)]).encode()]
    address = ipaddress.IPv6Address(value)
    exploded = address.exploded
    nibbles = " ".join(reversed(exploded.replace(":", ""))).encode()
    run = _ipv6_run(exploded, b" ")
    if run is not None:
        return [run, _ipv6_run(exploded, b"@3a") or b"", nibbles]
    # Nothing after the first group is long enough to be rare (`2001::1`): the first group
    # alone would flag every line of its registry's addresses. Its usual spellings instead.
    groups = exploded.split(":")
    forms = [address.compressed, exploded,
             ":".join(g.lstrip("0") or "0" for g in groups),  # as Java writes it
             ":".join(g if g.strip("0") else "0" for g in groups)]
    return [*(view_of(f) for f in forms), view_of(quote(address.compressed, safe="")), nibbles]


def _ipv6_run(exploded: str, sep: bytes) -> bytes | None:
    """The longest run of groups that every spelling of the address contains, whatever
    its zero compression (`::` may stand for any zero groups), leading zeros and case: a
    non-zero group as written without leading zeros (`db8` is in `0db8`), then groups of
    four digits (nothing can pad them), each with the colons around it that are certain.
    The first group (`2001`, `2a02`) is shared by the addresses of a whole registry: only
    runs after it count, and only with three digits or more (None if there is none).
    `sep` is how a colon reads in the view (`%3A`: `@3a`)."""
    groups = [g.lstrip("0") for g in exploded.split(":")]
    runs: list[bytes] = []
    for i, first in enumerate(groups):
        if not first:
            continue
        run = [first]
        k = i
        while k + 1 < 8 and len(groups[k + 1]) == 4:
            k += 1
            run.append(groups[k])
        literal = sep.join(g.encode() for g in run)
        if i > 0 and len(first) == 4:
            literal = sep + literal  # a colon before it, and no zero can come between
        if k < 7:
            literal += sep  # a colon after it (single, or the first of `::`)
        if i > 0:
            runs.append(literal)
    best = max(runs, key=len, default=b"")
    return best if len(best.replace(sep, b"")) >= 3 else None


def _id_literal(value: str) -> bytes:
    lit = view_of(value).strip()
    return lit if len(lit) >= SHORT_ID else b" " + lit + b" "


# -- stage 2: what a line mentions -------------------------------------------------------
@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    owner: _Owner


def _text_mentions(
    text: Any, types: frozenset[IdentityType], index: _Index, keyed_numeric_ids: bool
) -> list[_Mention]:
    """Mentions of the batch's identities in `text` (bytes or str), without overlaps."""
    pats = _BYTES if isinstance(text, bytes) else _STR
    found: list[_Mention] = []
    if IdentityType.EMAIL in types and index.emails:
        for m in pats.email.finditer(text):
            owner = index.emails.get(_email_key(m.group(1), m.group(2)))
            if owner is not None:
                found.append(_Mention(m.start(), m.end(), owner))
    if IdentityType.PHONE in types and index.phones:
        for m in pats.phone.finditer(text):
            found += _phone_mentions(m, pats, index)
    id_types = types & {IdentityType.USER_ID, IdentityType.DEVICE_ID, IdentityType.THIRD_PARTY}
    if id_types:
        found += _id_mentions(text, id_types, index, pats, keyed_numeric_ids)
    if IdentityType.IP in types and index.ips:
        found += _ip_mentions(text, pats, index)
    return _without_overlaps(found)


def _email_key(local: Any, domain: Any) -> str:
    if isinstance(local, bytes):
        local = unquote_to_bytes(local).decode("utf-8", "replace")
        domain = domain.decode("ascii")
    else:
        local = unquote(local)
    return f"{local}@{domain}".casefold()


def _phone_mentions(run: re.Match[Any], pats: _Patterns, index: _Index) -> list[_Mention]:
    """Slices of a run of digit groups that spell a phone of the batch. A slice starts and
    ends at group boundaries; the longest one starting at each group wins."""
    text = run.group(0)
    if len(text) < index.shortest_phone:
        return []  # fewer digits than any spelling of the batch's phones (IPs, sizes, ...)
    base = run.start()
    lead = 1 if text[:1] in ("+", b"+") else 3 if text[:1] in ("%", b"%") else 0
    plus = lead > 0
    groups = _phone_groups(text, lead, pats)
    # `+44 20 7946 0018`, `0044 …`: what follows the country code is a number of that
    # country, whatever its digits spell elsewhere (`20 7946 0018` is not Guangzhou's);
    # a run may go on with another number (`_abroad`, worked out only when it matters).
    country = _leading_country_code(groups[0][2], plus) if groups else None
    abroad: int | None = None  # groups after the country code that are its number
    out = []
    i = 0
    while i < len(groups):
        best = None
        digits = ""
        for j in range(i, len(groups)):
            if j == 1 and plus and groups[j][3] == "(0)":
                continue  # "+44 (0)20 …": the trunk prefix that a caller abroad leaves out
            digits += groups[j][2]
            if len(digits) > MAX_PHONE_DIGITS:
                break
            owner = index.phones.get(digits)
            if owner is None and i == 0 and plus:
                owner = index.phones.get("+" + digits)
            if owner is not None and i > 0 and country is not None \
                    and index.country_codes.get(owner.identity.value) != country:
                if abroad is None:
                    abroad = _abroad(groups, country)
                if i <= abroad:
                    owner = None
            if owner is not None and not (
                j > i and not (i == 0 and plus)
                and groups[i][2] == index.country_codes.get(owner.identity.value)
            ):
                # (A bare country code written apart, "86 138…", is more likely another
                # number next to a national one: only "+86 138…" and "0086 138…" count.)
                best = (j, owner)
        if best is None:
            i += 1
            continue
        j, owner = best
        start = 0 if (i == 0 and plus) else groups[i][0]
        out.append(_Mention(base + start, base + groups[j][1], owner))
        i = j + 1
    return out


def _leading_country_code(first: str, plus: bool) -> str | None:
    """The country code a run starts with, written apart from the rest (`+44 20…`,
    `0044 20…`), or None."""
    code = first if plus else first[2:] if first.startswith("00") else ""
    if code.isdigit() and int(code) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        return code
    return None


def _abroad(groups: list[tuple[int, int, str, str]], country: str) -> int:
    """How many groups after a leading country code are that country's number: the most
    that make a valid number of it (`+86 20 7946 0019` in `+86 20 7946 0019 2079460018`),
    else as many as make its longest national number."""
    longest = _longest_national(country)
    digits, valid, within = "", 0, 0
    for k in range(1, len(groups)):
        if k == 1 and groups[k][3] == "(0)":
            continue
        if len(digits) >= longest:
            break
        digits += groups[k][2]
        within = k
        with contextlib.suppress(phonenumbers.NumberParseException):
            if phonenumbers.is_valid_number(phonenumbers.parse(f"+{country}{digits}")):
                valid = k
    return valid or within


@functools.cache
def _longest_national(country: str) -> int:
    """The most digits a national number of `country` has (phonenumbers' metadata)."""
    code = int(country)
    meta = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
        code, phonenumbers.region_code_for_country_code(code))
    lengths = meta.general_desc.possible_length if meta and meta.general_desc else ()
    return max(lengths, default=MAX_PHONE_DIGITS)


def _phone_groups(text: Any, lead: int, pats: _Patterns) -> list[tuple[int, int, str, str]]:
    """The digit groups of a phone run after its `+`: (start, end, digits, as written). A
    group in parentheses spans them, so that a mention replaces `(415)` whole; `%20` is a
    separator, never digits."""
    groups = []
    for g in pats.groups.finditer(text, lead):
        written = g.group(0)
        if isinstance(written, bytes):
            written = written.decode("ascii")
        if written == "%20":
            continue
        groups.append((g.start(), g.end(), written.strip("()"), written))
    return groups


def _ip_mentions(text: Any, pats: _Patterns, index: _Index) -> list[_Mention]:
    """Whole-token IP addresses in `text` that are the batch's, in every spelling of the
    patterns above; `ipaddress` reads each candidate, so `2001:DB8::1`,
    `2001:0db8:0:0:0:0:0:1` and `::ffff:203.0.113.7` are the addresses they mean."""
    out = []
    for m in pats.ipv4.finditer(text):
        if m.group("arpa") is not None:
            span, value = m.span("arpa"), ".".join(reversed(_str(m.group("arpa")).split(".")))
        elif m.group("dot") is not None:
            span, value = m.span("dot"), _str(m.group("dot"))
        else:
            span, value = m.span("dash"), _str(m.group("dash")).replace("-", ".")
        if _inside_numbers(text, span[0]):
            continue  # `5-203-0-113-7`, `0-203.0.113.7` (a range): not this address alone
        owner = _ip_owner(value, m.group("len"), index)
        if owner is not None:
            out.append(_Mention(span[0], span[1], owner))
    for m in pats.ipv6.finditer(text):
        span, value = m.span("addr"), _str(m.group("addr"))
        if m.group("key") is not None:
            whole = _str(m.group(0)).partition("/")[0]
            if _ip6(whole) is not None:  # `face:b00c::1` is one address, not a key
                span, value = (m.start("key"), m.end("addr")), whole
        owner = _ip_owner(value, m.group("len"), index)
        if owner is not None:
            out.append(_Mention(span[0], span[1], owner))
    for m in pats.arpa6.finditer(text):
        nibbles = _str(m.group("nib")).replace(".", "")[::-1]
        owner = index.ips.get(_ip_key(ipaddress.IPv6Address(int(nibbles, 16))))
        if owner is not None:
            out.append(_Mention(m.start("nib"), m.end("nib") - 1, owner))  # up to the last dot
    for m in pats.dash6.finditer(text):
        owner = _ip_owner(_str(m.group("addr")).replace("-", ":"), None, index)
        if owner is not None:
            out.append(_Mention(m.start("addr"), m.end("addr"), owner))
    return out


def _str(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _inside_numbers(text: Any, start: int) -> bool:
    """Whether the token at `start` continues a run of numbers before it (`5-203-0-113-7`,
    `203.0.113.0-203.0.113.7`): a `.` or `-` right before it, after a group of digits that
    starts its token. A label ending in digits (`ec2-203-0-113-7`) is not a number."""
    sep = start - 1
    if sep < 0 or text[sep:start] not in (".", "-", b".", b"-"):
        return False
    first = sep
    while first > 0 and text[first - 1:first].isdigit():
        first -= 1
    return first < sep and (first == 0 or not text[first - 1:first].isalnum())


def _ip6(value: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(value.replace("%3A", ":").replace("%3a", ":"))
    except ValueError:
        return None


def _ip_owner(value: str, prefix: Any, index: _Index) -> _Owner | None:
    """The batch's owner of the address `value`, unless `prefix` makes it a network
    (`203.0.113.0/24`): with a prefix, only a host address counts (`/32`, `/128`, or host
    bits set, as in `203.0.113.7/24`, an interface)."""
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    if ":" in value or "%" in value:
        address = _ip6(value)
    else:
        try:
            address = ipaddress.IPv4Address(value)
        except ValueError:  # an octet over 255, or with a leading zero
            address = None
    if address is None:
        return None
    if prefix is not None:
        length = int(prefix)
        if length < address.max_prefixlen:
            network = ipaddress.ip_network(f"{address}/{length}", strict=False)
            if address == network.network_address:
                return None
    return index.ips.get(_ip_key(address))


def _ip_key(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address as `normalize_ip` writes it: an IPv4-mapped IPv6 address as its IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _id_mentions(
    text: Any, types: frozenset[IdentityType], index: _Index, pats: _Patterns,
    keyed_numeric_ids: bool,
) -> list[_Mention]:
    out = []
    want_users = IdentityType.USER_ID in types and bool(index.user_ids)
    if want_users and keyed_numeric_ids:
        for m in pats.uid_key.finditer(text):
            value = m.group(1)
            owner = index.user_ids.get(value if isinstance(value, str) else value.decode())
            if owner is not None:
                out.append(_Mention(m.start(1), m.end(1), owner))
    lengths = index.token_lengths
    for m in pats.token.finditer(text):
        raw = m.group(0)
        if len(raw) not in lengths and len(raw.strip(b".-" if isinstance(raw, bytes) else ".-")) \
                not in lengths:
            continue
        token = raw if isinstance(raw, str) else raw.decode("ascii")
        stripped = token.strip(".-")
        if not stripped:
            continue
        start = m.start() + (len(token) - len(token.lstrip(".-")))
        end = start + len(stripped)
        owner = None
        if want_users and not (keyed_numeric_ids and stripped.isdigit()):
            owner = index.user_ids.get(stripped)
        if owner is None and IdentityType.DEVICE_ID in types:
            owner = index.device_ids.get(stripped.casefold())
        if owner is None and IdentityType.THIRD_PARTY in types:
            owner = index.openids.get(stripped)
        if owner is not None:
            out.append(_Mention(start, end, owner))
    return out


def _without_overlaps(found: list[_Mention]) -> list[_Mention]:
    kept: list[_Mention] = []
    for m in sorted(found, key=lambda m: (m.start, -(m.end - m.start))):
        if not kept or m.start >= kept[-1].end:
            kept.append(m)
    return kept


Replacement = Callable[[_Owner], str]


@dataclass
class _LineHits:
    """What one line mentions, and how to rewrite it."""

    owners: list[_Owner]
    rewrite: Callable[[Replacement], bytes]

    @property
    def request_ids(self) -> set[str]:
        return {rid for o in self.owners for rid in o.request_ids}


def _apply(text: Any, mentions: list[_Mention], replace: Replacement) -> Any:
    parts: list[Any] = []
    pos = 0
    for m in mentions:
        new = replace(m.owner)
        parts += [text[pos : m.start], new.encode() if isinstance(text, bytes) else new]
        pos = m.end
    parts.append(text[pos:])
    return (b"" if isinstance(text, bytes) else "").join(parts)


class _LineReader:
    """Stage 2 for one source: a candidate line -> what it mentions (or None)."""

    def __init__(self, source: LogSource, index: _Index) -> None:
        self.index = index
        self.jsonl = source.format == "jsonl"
        self.fields = {p: IdentityType(t) for p, t in source.fields.items()}
        self.types = frozenset(self.fields.values()) if self.jsonl else frozenset(
            IdentityType(t) for t in source.identities
        )
        self.prefixes = {p.rsplit(".", i)[0] for p in self.fields for i in range(p.count(".") + 1)}

    def read(self, line: bytes) -> _LineHits | None:
        if self.jsonl:
            hits = self._read_json(line)
            if hits is not _NOT_JSON:
                return hits
        mentions = _text_mentions(line, self.types, self.index, keyed_numeric_ids=True)
        if not mentions:
            return None
        return _LineHits(
            [m.owner for m in mentions], lambda rep: _apply(line, mentions, rep)
        )

    def _read_json(self, line: bytes) -> Any:
        text = line.decode("utf-8", "surrogateescape")
        values: list[tuple[str, int, int, Any]] = []
        try:
            end = self._walk(text, _skip_ws(text, 0), "", values)
            if _skip_ws(text, end) != len(text) or not text.lstrip().startswith("{"):
                return _NOT_JSON
        except (ValueError, IndexError, StopIteration, RecursionError):
            return _NOT_JSON
        edits: list[tuple[int, int, Any, list[_Mention]]] = []
        for path, start, stop, value in values:
            kind = self.fields[path]
            if isinstance(value, bool) or value is None or not isinstance(value, str | int | float):
                continue
            subject_text = value if isinstance(value, str) else text[start:stop]
            mentions = _text_mentions(
                subject_text, frozenset({kind}), self.index, keyed_numeric_ids=False
            )
            if mentions:
                edits.append((start, stop, subject_text, mentions))
        if not edits:
            return None

        def rewrite(rep: Replacement) -> bytes:
            out, pos = [], 0
            for start, stop, subject_text, mentions in edits:
                new = _apply(subject_text, mentions, rep)
                out += [text[pos:start], json.dumps(new, ensure_ascii=text.isascii())]
                pos = stop
            out.append(text[pos:])
            return "".join(out).encode("utf-8", "surrogateescape")

        return _LineHits([m.owner for e in edits for m in e[3]], rewrite)

    def _walk(self, s: str, i: int, path: str, out: list[tuple[str, int, int, Any]]) -> int:
        """Walk one JSON value at `i`; record (path, start, end, value) of the scalars at
        declared paths. Subtrees that hold no declared path are skipped at C speed."""
        c = s[i]
        if c == "{" and (not path or path in self.prefixes):
            i = _skip_ws(s, i + 1)
            if s[i] == "}":
                return i + 1
            while True:
                if s[i] != '"':
                    raise ValueError("expected a key")
                key, i = scanstring(s, i + 1)
                i = _skip_ws(s, i)
                if s[i] != ":":
                    raise ValueError("expected ':'")
                i = self._walk(s, _skip_ws(s, i + 1), f"{path}.{key}" if path else key, out)
                i = _skip_ws(s, i)
                if s[i] == ",":
                    i = _skip_ws(s, i + 1)
                    continue
                if s[i] == "}":
                    return i + 1
                raise ValueError("expected ',' or '}'")
        if c == "[" and path in self.prefixes:
            i = _skip_ws(s, i + 1)
            if s[i] == "]":
                return i + 1
            while True:
                i = _skip_ws(s, self._walk(s, i, path, out))
                if s[i] == ",":
                    i = _skip_ws(s, i + 1)
                    continue
                if s[i] == "]":
                    return i + 1
                raise ValueError("expected ',' or ']'")
        value, end = _scan_once(s, i)
        if path in self.fields:
            out.append((path, i, end, value))
        return int(end)


_NOT_JSON = object()
# The C scanner behind json.loads, used piecewise: typeshed does not describe these two.
_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_WS = re.compile(r"[ \t\r\n]*")


def _skip_ws(s: str, i: int) -> int:
    m = _WS.match(s, i)
    return m.end() if m else i


# -- stage 1: the prefilter --------------------------------------------------------------
class _Prefilter:
    """The batch's literals, compiled once per call.

    `engine` is how they are matched: "view" (the literals, over each block's view: the
    way for large batches), "raw" (each literal as a pattern of byte classes over the block
    itself, so the block needs no view; equivalent byte for byte, faster for small batches
    whose patterns compile quickly) or "re" (Python's `re` over the view: the fallback
    without Hyperscan, slow). `ends(data)` gives the end offset of every match. Without an
    `engine`, `_engine_for` chooses for `scan_bytes`, the bytes the literals will scan."""

    def __init__(self, literals: list[bytes], engine: str | None = None,
                 scan_bytes: int | None = None) -> None:
        self.empty = not literals
        if engine is None:
            engine = "re" if _hs is None else _engine_for(literals, scan_bytes)
        self.engine = engine
        self._db: Any = None
        self._re: re.Pattern[bytes] | None = None
        if self.empty:
            return
        if engine == "re":
            # Every position, longest literal first: a lookahead finds overlapping matches.
            alternation = b"|".join(re.escape(x) for x in sorted(literals, key=len, reverse=True))
            self._re = re.compile(b"(?=(" + alternation + b"))")
            return
        self._db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
        if engine == "raw":
            patterns = [b"".join(_RAW_CLASS[c] for c in lit) for lit in literals]
            self._db.compile(expressions=patterns, ids=list(range(len(patterns))),
                             elements=len(patterns), flags=0)
        else:
            self._db.compile(expressions=literals, ids=list(range(len(literals))),
                             elements=len(literals), flags=0, literal=True)

    @property
    def wants_view(self) -> bool:
        return self.engine != "raw"

    def ends(self, data: bytes | memoryview) -> list[int]:
        if self.empty:
            return []
        if self._db is not None:
            found: list[int] = []
            append = found.append

            def on_match(_id: int, _start: int, end: int, _flags: int, _ctx: object) -> None:
                append(end)

            self._db.scan(data, match_event_handler=on_match)
            return found
        assert self._re is not None
        return [m.start() + len(m.group(1)) for m in self._re.finditer(bytes(data))]


def _raw_class(view_byte: int) -> bytes:
    """The raw bytes that the view turns into `view_byte`, as a pattern."""
    members = bytes(c for c in range(256) if VIEW[c] == view_byte)
    if len(members) == 1:
        return re.escape(members)
    if view_byte == _SPACE:  # everything that is not part of an identifier
        return rb"[^A-Za-z0-9_@%]"
    return b"[" + b"".join(b"\\x%02x" % c for c in members) + b"]"


_RAW_CLASS = {b: _raw_class(b) for b in set(VIEW)}
RAW_MAX = 2000  # literals up to which "raw" beats "view" (its compile time grows faster)
# What the choice weighs (measured on a 2-core EPYC VM, hyperscan 0.9): translating a
# block into the view costs about 0.65 s/GiB; compiling n literals with a byte class inside
# them (`203 0 113 7`, `138 0013 8000`, `zhang wei@`) as raw patterns about
# 1e-4 * n**1.4 s (0.06 s for 100, 0.3 s for 300, 0.75 s for 600); other literals little.
VIEW_S_PER_BYTE = 0.65 / 2**30
RAW_COMPILE_S = 1e-4


def _engine_for(literals: list[bytes], scan_bytes: int | None) -> str:
    """"raw" while compiling the literals as byte-class patterns costs less than
    translating the bytes they scan into the view, else "view". IP addresses and grouped
    phone numbers are literals of short digit runs between classes, the costly kind: a
    batch that has many of them is read through the view unless its logs are large."""
    if len(literals) > RAW_MAX:
        return "view"
    if scan_bytes is None:
        return "raw"
    classed = sum(1 for lit in literals if b" " in lit.strip(b" ") or b"@" in lit)
    return "raw" if RAW_COMPILE_S * classed ** 1.4 <= VIEW_S_PER_BYTE * scan_bytes else "view"


@dataclass
class _Hit:
    offset: int  # of the line's first byte in the (decompressed) stream
    length: int  # without the newline
    lineno: int  # 1-based; 0 unless line numbers were asked for
    line: bytes
    hits: _LineHits


@dataclass
class _Block:
    """Whole lines of a stream: `data[0]` is the newline before the first of them (a
    delimiter for the view), `data[last]` the newline after the last one."""

    data: bytes
    last: int
    base: int  # stream offset of data[0]
    first_line: int  # number of the line that starts at data[1] (if counted)


def _blocks(read: Callable[[int], bytes], start: int, line_numbers: bool) -> Iterator[_Block]:
    carry = [b"\n"]  # the unfinished line (in pieces: a very long line costs no copies)
    base = start - 1
    first_line = 1
    while True:
        data = read(BLOCK)
        if data:
            newline = data.rfind(b"\n")
            if newline < 0:
                carry.append(data)  # a line longer than a block: read on
                continue
            head = b"".join(carry)
            block = head + data
            last = len(head) + newline
        elif len(carry) > 1 or len(carry[0]) > 1:
            block = b"".join(carry) + b"\n"  # the last line has no newline: give it one
            last = len(block) - 1
        else:
            return
        yield _Block(block, last, base, first_line)
        if not data:
            return
        if line_numbers:
            first_line += block.count(b"\n", 1, last + 1)
        base += last
        carry = [block[last:]]


def _scan(
    read: Callable[[int], bytes], prefilter: _Prefilter, reader: _LineReader,
    start: int = 0, line_numbers: bool = False,
) -> Iterator[_Hit]:
    """The lines of a stream that mention someone of the batch. `start` is the stream
    offset of the first byte `read` returns (it must be the start of a line)."""
    if prefilter.empty:
        return  # nobody of the batch has an identity this source could hold
    translate = prefilter.wants_view
    for block in _blocks(read, start, line_numbers):
        data = block.data.translate(VIEW) if translate else block.data
        ends = prefilter.ends(memoryview(data)[: block.last + 1])
        yield from _lines(block, ends, reader, line_numbers)


def _lines(
    block: _Block, ends: list[int], reader: _LineReader, line_numbers: bool
) -> Iterator[_Hit]:
    data = block.data
    seen: set[int] = set()
    for end in sorted(ends):
        pos = end - 1
        line_start = data.rfind(b"\n", 0, pos) + 1
        if line_start in seen or line_start == 0:
            continue
        seen.add(line_start)
        line_end = data.find(b"\n", pos)
        line = data[line_start:line_end]
        hits = reader.read(line)
        if hits is None:
            continue
        lineno = block.first_line + data.count(b"\n", 1, line_start) if line_numbers else 0
        yield _Hit(block.base + line_start, line_end - line_start, lineno, line, hits)


# -- files ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _File:
    """A log file or object: `name` is what records and errors show (the path the glob
    matched, relative to the base directory, or the S3 key).

    A local file is read and rewritten at `path`, the real file: behind every symbolic
    link, so that the link stays a link and the data it points at is what changes."""

    source: str
    name: str
    path: str | None = None  # local files: the real file (links resolved)
    bucket: str | None = None  # S3 objects
    etag: str | None = None
    size: int = 0  # bytes when it was listed (S3: also part of its look)
    real_name: str = ""  # local: the real file relative to the real base directory
    inode: tuple[int, int] = (0, 0)  # local: (st_dev, st_ino) when it was listed

    @property
    def linked(self) -> bool:
        """The glob matched a link (or a path through a linked directory)."""
        return self.path is not None and self.real_name != self.name

    @property
    def key(self) -> str:
        """Its checkpoint key: the real file, so any name that reaches it finds its entry."""
        return f"{self.source}\x00{self.bucket or ''}\x00{self.real_name or self.name}"

    def look(self) -> list[Any]:
        """What the file looks like now (inode, size, mtime; S3: ETag, size)."""
        if self.path is not None:
            return _look(os.stat(self.path))
        return [self.etag, self.size]


def _look(st: os.stat_result) -> list[Any]:
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _is_gzip(head: bytes) -> bool:
    return head[:2] == _GZIP_MAGIC


@contextlib.contextmanager
def _open_stream(path: str) -> Iterator[IO[bytes]]:
    with open(path, "rb") as raw:
        if _is_gzip(raw.read(2)):
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield gz  # type: ignore[misc]
        else:
            raw.seek(0)
            yield raw


def _copy_range(src: int, dst: int, offset: int, count: int) -> None:
    """Copy `count` bytes of `src` from `offset` to the end of `dst`, in the kernel when it
    can (copy_file_range, Linux), else through a buffer."""
    in_kernel = getattr(os, "copy_file_range", None)
    while count > 0:
        n = 0
        if in_kernel is not None:
            try:
                n = in_kernel(src, dst, count, offset)
            except OSError:
                in_kernel = None  # not across these file systems: copy through a buffer
        if n <= 0:
            chunk = os.pread(src, min(count, BLOCK), offset)
            if not chunk:
                raise LogsError("the file ended early while it was copied")
            n = os.write(dst, chunk)
        offset += n
        count -= n


Change = tuple[int, int, bytes]  # offset, length of the old line, new line


class _NoTemp(Exception):
    """The new version's temporary file could not be created (a directory that is not
    writable, a full disk): told apart from a failure to read the file."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def _new_temp(directory: str, prefix: str) -> tuple[int, str]:
    try:
        return tempfile.mkstemp(dir=directory, prefix=prefix, suffix=TMP_SUFFIX)
    except OSError as exc:
        raise _NoTemp(exc) from None


class _Rewriter:
    """Writes the new version of a plain file while the scan goes on: the first change
    creates the temporary file, and a worker thread copies the unchanged stretch before
    each change in the kernel (copy_file_range releases the GIL), then writes the new
    line. Changes arrive in file order; one worker keeps them in order."""

    def __init__(self, src_path: str, directory: str, prefix: str) -> None:
        self.src_path = src_path
        self.directory = directory
        self.prefix = prefix
        self.tmp: str | None = None
        self._src = -1
        self._dst = -1
        self._pos = 0
        self._pool: ThreadPoolExecutor | None = None
        self._futures: deque[Future[None]] = deque()

    @property
    def started(self) -> bool:
        return self.tmp is not None

    def change(self, offset: int, length: int, new: bytes) -> None:
        if self._pool is None:
            self._dst, self.tmp = _new_temp(self.directory, self.prefix)
            self._src = os.open(self.src_path, os.O_RDONLY)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logs-write")
        self._futures.append(self._pool.submit(self._copy, self._pos, offset - self._pos, new))
        self._pos = offset + length
        while self._futures and self._futures[0].done():
            self._futures.popleft().result()  # surface a write error early

    def finish(self, size: int) -> str:
        """Copy the rest up to `size`; returns the temporary file."""
        assert self._pool is not None and self.tmp is not None
        self._futures.append(self._pool.submit(self._copy, self._pos, size - self._pos, b""))
        self._pos = size
        try:
            while self._futures:
                self._futures.popleft().result()
        finally:
            self._close()
        return self.tmp

    def discard(self) -> None:
        self._close()
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)

    def _copy(self, pos: int, count: int, new: bytes) -> None:
        _copy_range(self._src, self._dst, pos, count)
        view = memoryview(new)
        while view:
            view = view[os.write(self._dst, view):]

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for fd in (self._src, self._dst):
            if fd >= 0:
                os.close(fd)
        self._src = self._dst = -1


class _Counted:
    """A read function that counts the bytes it returned."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.total = 0

    def read(self, n: int) -> bytes:
        data = self._read(n)
        self.total += len(data)
        return data


def _write_gzip(src_path: str, dst_fd: int, changes: list[Change]) -> None:
    with open(src_path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as src, \
            open(dst_fd, "wb", closefd=False) as dst_raw, \
            gzip.GzipFile(fileobj=dst_raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0,
                          filename="") as dst:
        pos = 0
        for offset, length, new in changes:
            _copy_stream(src, dst, offset - pos)
            dst.write(new)
            _skip_stream(src, length)
            pos = offset + length
        shutil.copyfileobj(src, dst, BLOCK)


def _copy_stream(src: Any, dst: Any, count: int) -> None:
    while count > 0:
        chunk = src.read(min(count, BLOCK))
        if not chunk:
            raise LogsError("the file ended early while it was copied")
        dst.write(chunk)
        count -= len(chunk)


def _skip_stream(src: Any, count: int) -> None:
    while count > 0:
        chunk = src.read(min(count, BLOCK))
        if not chunk:
            raise LogsError("the file ended early while it was copied")
        count -= len(chunk)


def _replace_file(tmp: str, path: str) -> None:
    """Move the rewritten file into place (one function, so a test can fail it)."""
    os.replace(tmp, path)


# -- in-place rewrites (files with hard links) ---------------------------------------------
def _open_in_place(path: str, expected: os.stat_result) -> int:
    """The real file, open for writing, if it is still the inode that was read."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "the file was replaced while it was read")
    return fd


def _commit_in_place(directory: Path, token: str, tmp: str, record: dict[str, Any]) -> str:
    """Journal an in-place rewrite: the new version goes under a name that no clean-up
    deletes, then the journal that says where it is copied to is written whole (the
    commit). A crash before the journal leaves a new version that nothing was copied from,
    which the next run deletes. Returns the new version's path."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())  # on disk before the journal says it exists
    content = str(directory / f".{token}{PENDING_SUFFIX}")
    os.replace(tmp, content)
    fd, part = tempfile.mkstemp(dir=directory, prefix=".journal.", suffix=TMP_SUFFIX)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, f"{content}.json")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
        raise
    _fsync_directory(directory)
    return content


def _copy_in_place(src: str, fd: int, times: tuple[int, int]) -> os.stat_result:
    """Copy `src` over the open file `fd` from its first byte, cut it to that length and
    give it back its times: the same inode now holds the new version. Repeating it after a
    crash part-way gives the same file (one function, so a test can fail it)."""
    with open(src, "rb") as new:
        size = os.fstat(new.fileno()).st_size
        os.lseek(fd, 0, os.SEEK_SET)
        _copy_range(new.fileno(), fd, 0, size)
    os.ftruncate(fd, size)
    with contextlib.suppress(PermissionError):  # a writer that does not own the file
        os.utime(fd, ns=times)
    os.fsync(fd)
    return os.fstat(fd)


def _drop_in_place(content: str) -> None:
    """A finished in-place rewrite: the journal first (a new version without one is
    deleted by the next run), then the new version."""
    for path in (f"{content}.json", content):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(directory: str) -> None:
    """Temporary files of an interrupted rewrite hold a partial copy of a log: delete."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))


# -- checkpoints ---------------------------------------------------------------------------
class _Checkpoint:
    """Files already finished for one batch: name -> look afterwards, counts, state. An
    append-only JSON-lines file (the last entry of a name wins; a line torn by a crash is
    ignored), so recording a file costs one short write however many came before."""

    def __init__(self, state_dir: Path, batch: str) -> None:
        self.batch = batch
        self.path = state_dir / f"erase-{batch}.jsonl"
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    self.entries[str(record.pop("file"))] = record
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Record a file's state; its counts are untold until `tell` (unless the entry
        says otherwise: a change to a told entry stays told)."""
        self._append(key, {"told": False, **entry})

    def tell(self, key: str) -> None:
        """The file's counts have been reported: a rerun does not report them again."""
        if key in self.entries:
            self._append(key, {**self.entries[key], "told": True})

    def _append(self, key: str, entry: dict[str, Any]) -> None:
        self.entries[key] = entry
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"file": key, **entry}, sort_keys=True) + "\n")


Counts = dict[str, list[int]]  # request id -> [found, anonymized]


# -- the connector ---------------------------------------------------------------------------
class LogsConnector:
    kind = "logs"

    def __init__(
        self, name: str, system: LogsSystem, base_dir: Path, state_dir: Path,
        client: Any | None = None,
    ) -> None:
        self.name = name
        self.system = system
        self.base_dir = Path(base_dir)
        self.state_dir = Path(state_dir)
        self._client = client
        self.engine: str | None = None  # tests: force a prefilter engine (view, raw, re)

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3", endpoint_url=resolve_endpoint(self.name, self.system, LogsConfigError),
                region_name=self.system.region,
            )
        return self._client

    # -- contract ---------------------------------------------------------------------------
    def collect(self, subjects: Sequence[Subject], scope: Scope) -> dict[str, Records]:
        records: dict[str, Records] = {s.request_id: {} for s in subjects}
        if not self._in_scope(scope):
            return records
        index = _Index.build(subjects, self.system.phone_region)
        with self._reading():
            for source_name, source, files in self._plan():
                reader, prefilter = self._stages(source, index, files)
                for file in files:
                    for hit in self._scan_file(file, reader, prefilter, line_numbers=True):
                        text = hit.line.decode("utf-8", "replace").rstrip("\r")
                        for rid in sorted(hit.hits.request_ids):
                            records[rid].setdefault(source_name, []).append(
                                {"file": file.name, "line": hit.lineno, "text": text}
                            )
        return records

    def verify(self, subjects: Sequence[Subject], scope: Scope) -> dict[str, Outcome]:
        outcomes = {s.request_id: Outcome() for s in subjects}
        if not self._in_scope(scope):
            return outcomes
        index = _Index.build(subjects, self.system.phone_region)
        with self._reading():
            for source_name, source, files in self._plan():
                reader, prefilter = self._stages(source, index, files)
                for outcome in outcomes.values():
                    outcome.part(source_name)
                for file in files:
                    for hit in self._scan_file(file, reader, prefilter):
                        for rid in hit.hits.request_ids:
                            part = outcomes[rid].part(source_name)
                            part.found += 1
                            part.remaining += 1
        return outcomes

    def erase(
        self,
        subjects: Sequence[Subject],
        scope: Scope,
        pseudonymizers: Mapping[str, Pseudonymizer],
        progress: Callable[[Mapping[str, Outcome]], None] | None = None,
    ) -> dict[str, Outcome]:
        """Rewrite every file holding the subjects' lines, one file at a time. Reports what
        this call changed: a file an earlier call already rewrote holds none of their
        lines, and counts nothing. `progress`, if given, is told after each file what the
        requests with lines in it have had changed so far, so the counts of a run stopped
        half-way are not lost."""
        outcomes = {s.request_id: Outcome() for s in subjects}
        if not self._in_scope(scope):
            return outcomes
        index = _Index.build(subjects, self.system.phone_region)
        replace = self._replacement(pseudonymizers)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            # Before anything is read: no run may read a file half copied into its inode.
            self._finish_in_place_copies()
            checkpoint = _Checkpoint(self.state_dir, self._batch(subjects, pseudonymizers))
            self._remove_stale_temps()
            for source_name, source, files in self._plan():
                reader, prefilter = self._stages(source, index, files)
                statement = hashlib.sha256(f"{source_name}:rewrite".encode()).hexdigest()
                for outcome in outcomes.values():
                    outcome.part(source_name)
                for file in files:
                    counts = self._erase_file(file, reader, prefilter, replace, checkpoint)
                    for rid, (found, anonymized) in counts.items():
                        part = outcomes[rid].part(source_name)
                        part.found += found
                        part.anonymized += anonymized
                        if found:
                            part.statements = [statement]
                    changed = [rid for rid, (_, anonymized) in counts.items() if anonymized]
                    if progress is not None and changed:
                        progress({rid: outcomes[rid] for rid in changed})
                    if counts:
                        # Told (or, with no `progress`, in what this call returns): a
                        # rerun of the batch does not report the file again. A crash
                        # before this leaves it untold, and the rerun reports it.
                        checkpoint.tell(file.key)
        return outcomes

    # -- erasing one file -------------------------------------------------------------------
    def _erase_file(
        self, file: _File, reader: _LineReader, prefilter: _Prefilter, replace: Replacement,
        checkpoint: _Checkpoint,
    ) -> Counts:
        if prefilter.empty:
            return {}
        key = file.key
        done = checkpoint.get(key)
        if done is not None and done.get("look") == self._look(file):
            if file.bucket is not None and not done.get("purged", True):
                self._purge_versions(file, done.get("version_id"))
                checkpoint.put(key, {**done, "purged": True})
            if not done.get("told", True):
                # Rewritten by a call that stopped before reporting it (or finished by
                # recovery): this call reports it.
                return {rid: list(c) for rid, c in done.get("counts", {}).items()}
            return {}  # rewritten by an earlier call, which reported it
        if file.bucket is not None:
            return self._erase_object(file, reader, prefilter, replace, checkpoint, key)
        return self._erase_local(file, reader, prefilter, replace, checkpoint, key)

    def _erase_local(
        self, file: _File, reader: _LineReader, prefilter: _Prefilter, replace: Replacement,
        checkpoint: _Checkpoint, key: str,
    ) -> Counts:
        assert file.path is not None
        path = file.path
        for _attempt in range(5):
            before = self._stat(file)
            # A file with other names (hard links, some perhaps outside every source) must
            # keep its inode, or those names would keep the old version.
            in_place = before.st_nlink > 1
            directory = str(self._pending_dir) if in_place else os.path.dirname(path) or "."
            rewritten = self._rewrite(file, path, directory, reader, prefilter, replace)
            if rewritten is None:
                continue  # the last line was still being written when we read it
            tmp, counts, covered = rewritten
            if tmp is None:
                after = self._stat(file)
                if _unchanged(before, after, covered):
                    checkpoint.put(key, {"look": _look(after), "counts": counts})
                    return counts
                continue
            try:
                after = self._stat(file)
                if not _unchanged(before, after, covered):
                    os.unlink(tmp)
                    continue  # it changed in a way we cannot follow: start over
                if in_place:
                    self._copy_into_place(file, tmp, after, counts, checkpoint, key)
                else:
                    self._move_into_place(file, tmp, after, counts, checkpoint, key)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return counts
        raise LogsError(
            f"systems.{self.name}.sources.{file.source}: {file.name} kept changing while it "
            "was rewritten; run again"
        )

    def _move_into_place(
        self, file: _File, tmp: str, old: os.stat_result, counts: Counts,
        checkpoint: _Checkpoint, key: str,
    ) -> None:
        """Replace the real file by its new version, with the old one's mode, owner and
        times: a reader sees the old file or the new one, never half of one."""
        assert file.path is not None
        try:
            os.chmod(tmp, old.st_mode & 0o7777)
            with contextlib.suppress(PermissionError):
                os.chown(tmp, old.st_uid, old.st_gid)
            os.utime(tmp, ns=(old.st_atime_ns, old.st_mtime_ns))
            new = os.stat(tmp)
        except OSError as exc:
            raise self._error(file, "write the new version", exc) from None
        # Recorded before the move: if we die in between, the old file's look does not
        # match the record and the rerun does the file again.
        checkpoint.put(key, {"look": _look(new), "counts": counts})
        try:
            _replace_file(tmp, file.path)
        except OSError as exc:
            raise self._error(file, "replace", exc) from None

    def _copy_into_place(
        self, file: _File, tmp: str, old: os.stat_result, counts: Counts,
        checkpoint: _Checkpoint, key: str,
    ) -> None:
        """Copy the new version into the file's own inode (a file with hard links), so
        that every name sees it. Readers may see a half-copied file meanwhile; a crash
        leaves a journal that the next erase of this system finishes before it reads
        anything, whatever its batch (see `_finish_in_place_copies`)."""
        assert file.path is not None
        try:
            fd = _open_in_place(file.path, old)
        except OSError as exc:
            raise self._error(file, "open for an in-place rewrite", exc) from None
        token = secrets.token_hex(8)
        record = {
            "batch": checkpoint.batch, "key": key, "counts": counts, "source": file.source,
            "name": file.name, "real_name": file.real_name, "path": file.path,
            "inode": [old.st_dev, old.st_ino], "times": [old.st_atime_ns, old.st_mtime_ns],
        }
        try:
            # Said before the first byte of the file changes. This entry never matches a
            # look, so if the journal was not committed the rerun does the file again.
            pending = str(self._pending_dir / f".{token}{PENDING_SUFFIX}")
            checkpoint.put(key, {"look": None, "counts": counts, "in_place": pending})
            try:
                content = _commit_in_place(self._pending_dir, token, tmp, record)
            except OSError as exc:
                raise self._error(file, "record the in-place rewrite", exc) from None
            try:
                with self._copy_lock(shared=False):
                    new = _copy_in_place(content, fd, (old.st_atime_ns, old.st_mtime_ns))
            except OSError as exc:
                error = self._error(file, "rewrite in place", exc)
                raise LogsError(f"{error}; the next erase of this system finishes it") \
                    from None
        finally:
            os.close(fd)
        checkpoint.put(key, {"look": _look(new), "counts": counts})
        _drop_in_place(content)

    def _finish_in_place_copies(self) -> None:
        """Finish every in-place rewrite a crash interrupted (of any batch: a file half
        copied into its inode must not be read by anyone), and record it as done in its
        batch's checkpoint with the counts it had, so a rerun reports them."""
        directory = self._pending_dir
        directory.mkdir(parents=True, exist_ok=True)
        for journal in sorted(directory.glob(f".*{PENDING_SUFFIX}.json")):
            content = str(journal)[: -len(".json")]
            record = json.loads(journal.read_text(encoding="utf-8"))
            file = _File(record["source"], record["name"], path=record["path"],
                         real_name=record["real_name"])
            operation = f"finishing an interrupted in-place rewrite (journal {journal})"
            try:
                fd = os.open(file.path or "", os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                raise self._error(file, operation, exc) from None
            try:
                st = os.fstat(fd)
                if [st.st_dev, st.st_ino] != record["inode"]:
                    raise LogsError(
                        f"systems.{self.name}.sources.{file.source}: {file.name}: the file "
                        f"was replaced before its interrupted in-place rewrite was finished; "
                        f"check its other names, then delete {journal} and {content}"
                    )
                with self._copy_lock(shared=False):
                    new = _copy_in_place(content, fd, (record["times"][0], record["times"][1]))
            except OSError as exc:
                raise self._error(file, operation, exc) from None
            finally:
                os.close(fd)
            _Checkpoint(self.state_dir, record["batch"]).put(
                record["key"], {"look": _look(new), "counts": record["counts"]}
            )
            _drop_in_place(content)
        for content_path in directory.glob(f".*{PENDING_SUFFIX}"):
            # A new version whose journal was never written: nothing was copied from it.
            if not os.path.exists(f"{content_path}.json"):
                with contextlib.suppress(FileNotFoundError):
                    content_path.unlink()

    @property
    def _pending_dir(self) -> Path:
        """In-place rewrites in progress: outside every log directory, so no clean-up of
        temporary files there deletes what a crashed copy still needs."""
        return self.state_dir / "in-place"

    def _look(self, file: _File) -> list[Any]:
        return file.look() if file.path is None else _look(self._stat(file))

    def _stat(self, file: _File) -> os.stat_result:
        assert file.path is not None
        try:
            return os.stat(file.path)
        except OSError as exc:
            raise self._error(file, "stat", exc) from None

    def _rewrite(
        self, file: _File, path: str, directory: str, reader: _LineReader,
        prefilter: _Prefilter, replace: Replacement,
    ) -> tuple[str | None, Counts, int] | None:
        """Read `path` once; if a line mentions someone, write the new version into
        `directory`. Returns (the new file or None, counts, bytes of the old file it
        covers: -1 for gzip), or None when a plain file grew in the middle of a line."""
        counts: Counts = {}
        prefix = f".{os.path.basename(path)}."
        try:
            with open(path, "rb") as raw:
                if _is_gzip(raw.read(2)):
                    raw.seek(0)
                    changes: list[Change] = []
                    with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                        for hit in _scan(stream.read, prefilter, reader):
                            changes.append((hit.offset, hit.length, hit.hits.rewrite(replace)))
                            _count(counts, hit.hits)
                    if not changes:
                        return None, counts, -1
                    fd, tmp = _new_temp(directory, prefix)
                    try:
                        _write_gzip(path, fd, changes)
                    except BaseException:
                        os.close(fd)
                        os.unlink(tmp)
                        raise
                    os.close(fd)
                    return tmp, counts, -1
                raw.seek(0)
                read = _Counted(raw.read)
                rewriter = _Rewriter(path, directory, prefix)
                try:
                    start = 0
                    while True:
                        for hit in _scan(read.read, prefilter, reader, start=start):
                            rewriter.change(hit.offset, hit.length, hit.hits.rewrite(replace))
                            _count(counts, hit.hits)
                        # Lines appended while we read (an active log) are read too.
                        if not rewriter.started or os.fstat(raw.fileno()).st_size <= read.total:
                            break
                        if os.pread(raw.fileno(), 1, read.total - 1) != b"\n":
                            rewriter.discard()
                            return None
                        start = read.total
                    if not rewriter.started:
                        return None, counts, read.total
                    return rewriter.finish(read.total), counts, read.total
                except BaseException:
                    rewriter.discard()
                    raise
        except _NoTemp as exc:
            raise self._error(file, f"create a temporary file in {directory}", exc.error) \
                from None
        except (OSError, EOFError, zlib.error) as exc:
            raise self._error(file, "read", exc) from None

    def _erase_object(
        self, file: _File, reader: _LineReader, prefilter: _Prefilter, replace: Replacement,
        checkpoint: _Checkpoint, key: str,
    ) -> Counts:
        assert file.bucket is not None
        work = self.state_dir / "tmp"
        work.mkdir(parents=True, exist_ok=True)
        fd, local = tempfile.mkstemp(dir=work, prefix=".object.", suffix=TMP_SUFFIX)
        os.close(fd)
        try:
            try:
                head = self.client.head_object(Bucket=file.bucket, Key=file.name)
                with open(local, "wb") as out:
                    body = self.client.get_object(Bucket=file.bucket, Key=file.name)["Body"]
                    shutil.copyfileobj(body, out, BLOCK)
            except Exception as exc:
                raise self._error(file, "download", exc) from None
            work_dir = str(work)
            done = self._rewrite(file, local, work_dir, reader, prefilter, replace)
            assert done is not None  # a downloaded copy does not grow
            rewritten, counts, _covered = done
            if rewritten is None:
                checkpoint.put(key, {"look": file.look(), "counts": counts})
                return counts
            try:
                md5 = hashlib.md5(usedforsecurity=False)
                with open(rewritten, "rb") as f:
                    for chunk in iter(lambda: f.read(BLOCK), b""):
                        md5.update(chunk)
                size = os.stat(rewritten).st_size
                expected = [f'"{md5.hexdigest()}"', size]
                checkpoint.put(key, {"look": expected, "counts": counts, "purged": False})
                extra = {
                    k: head[k] for k in (
                        "ContentType", "ContentEncoding", "ContentDisposition",
                        "ContentLanguage", "CacheControl", "Metadata",
                    ) if head.get(k)
                }
                try:
                    with open(rewritten, "rb") as f:
                        put = self.client.put_object(
                            Bucket=file.bucket, Key=file.name, Body=f, **extra
                        )
                except Exception as exc:
                    raise self._error(file, "put", exc) from None
                look = [put.get("ETag", expected[0]), size]
                checkpoint.put(key, {"look": look, "counts": counts, "purged": False,
                                     "version_id": put.get("VersionId")})
                self._purge_versions(file, put.get("VersionId"))
                checkpoint.put(key, {"look": look, "counts": counts, "purged": True})
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(rewritten)
            return counts
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(local)

    def _purge_versions(self, file: _File, keep: str | None) -> None:
        """Every version and delete marker of the key but `keep` (versioned buckets)."""
        assert file.bucket is not None
        try:
            if not versioned(self.client, file.bucket):
                return
            doomed = [{"Key": file.name, "VersionId": v}
                      for v in key_versions(self.client, file.bucket, file.name) if v != keep]
            errors = delete_versions(self.client, file.bucket, doomed)
        except Exception as exc:
            raise self._error(file, "delete old versions", exc) from None
        if errors:
            raise LogsError(
                f"systems.{self.name}.sources.{file.source}: s3://{file.bucket}/"
                f"{file.name}: deleting old versions failed ({', '.join(sorted(errors))})"
            )

    # -- reading ----------------------------------------------------------------------------
    def _scan_file(
        self, file: _File, reader: _LineReader, prefilter: _Prefilter,
        line_numbers: bool = False,
    ) -> Iterator[_Hit]:
        if prefilter.empty:
            return
        try:
            if file.path is not None:
                with _open_stream(file.path) as local:
                    yield from _scan(local.read, prefilter, reader, line_numbers=line_numbers)
                return
            body = self.client.get_object(Bucket=file.bucket, Key=file.name)["Body"]
            try:
                head = body.read(2)
                stream: Any = _Prefixed(head, body)
                if _is_gzip(head):
                    stream = gzip.GzipFile(fileobj=stream, mode="rb")
                yield from _scan(stream.read, prefilter, reader, line_numbers=line_numbers)
            finally:
                body.close()
        except LogsError:
            raise
        except (OSError, EOFError, zlib.error) as exc:
            raise self._error(file, "read", exc) from None
        except Exception as exc:
            if file.bucket is None:
                raise
            raise self._error(file, "read", exc) from None

    def _plan(self) -> list[tuple[str, LogSource, list[_File]]]:
        """Every source with its files, in data-map order. A real file that several names
        reach (symbolic links, link chains, hard links, overlapping globs, several sources
        that read it alike) appears once, under the first source and the first name that
        reach it: it is read, rewritten and counted once. Sources that read it differently
        (another format, other fields or identity types) each read it in their own way, one
        after the other, so that nothing either of them would find is left. Every source is
        listed before any file is rewritten: a rewrite gives a file a new inode, which must
        not make it look new."""
        seen: set[tuple[tuple[int, int], Any]] = set()
        plan = []
        for source_name, source in self.system.sources.items():
            reading = (source.format, tuple(sorted(source.fields.items())),
                       tuple(sorted(source.identities)))
            files = []
            for file in self._files(source_name, source):
                if file.path is not None:
                    if (file.inode, reading) in seen:
                        continue
                    seen.add((file.inode, reading))
                files.append(file)
            plan.append((source_name, source, files))
        return plan

    def _files(self, source_name: str, source: LogSource) -> list[_File]:
        if source.path is not None:
            return self._local_files(source_name, source.path)
        assert source.s3 is not None
        files = []
        client = self.client  # a configuration error is reported as such, not as S3's
        try:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=source.s3.bucket, Prefix=source.s3.prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith("/"):
                        continue
                    files.append(_File(source_name, obj["Key"], bucket=source.s3.bucket,
                                       etag=obj.get("ETag"), size=int(obj.get("Size", 0))))
        except Exception as exc:
            raise LogsError(
                f"systems.{self.name}.sources.{source_name}: listing s3://{source.s3.bucket}/"
                f"{source.s3.prefix} failed ({_code(exc)})"
            ) from None
        return sorted(files, key=lambda f: f.name)

    def _local_files(self, source_name: str, path: str) -> list[_File]:
        pattern = os.path.join(self.base_dir, path)
        real_base = os.path.realpath(self.base_dir)
        files = []
        for match in sorted(globmod.glob(pattern, recursive=True)):
            name = Path(os.path.relpath(match, self.base_dir)).as_posix()
            real = os.path.realpath(match)
            try:
                st = os.stat(real)
            except OSError as exc:
                if exc.errno in _NO_FILE:
                    continue  # a dangling link (or a loop of links) holds no data
                raise LogsError(
                    f"systems.{self.name}.sources.{source_name}: {name}: stat failed "
                    f"({_code(exc)})"
                ) from None
            if not stat.S_ISREG(st.st_mode):
                continue
            real_name = Path(os.path.relpath(real, real_base)).as_posix()
            files.append(_File(source_name, name, path=real, real_name=real_name,
                               size=st.st_size, inode=(st.st_dev, st.st_ino)))
        return files

    # -- helpers ----------------------------------------------------------------------------
    def _stages(
        self, source: LogSource, index: _Index, files: Sequence[_File],
    ) -> tuple[_LineReader, _Prefilter]:
        reader = _LineReader(source, index)
        size = sum(f.size for f in files)  # gzip: compressed, so the view's cost is more
        return reader, _Prefilter(reader.index.literals(reader.types), self.engine, size)

    def _in_scope(self, scope: Scope) -> bool:
        return scope is None or self.system.category in scope

    def _replacement(self, pseudonymizers: Mapping[str, Pseudonymizer]) -> Replacement:
        if self.system.action is Action.REDACT:
            marker = self.system.redact_with
            return lambda _owner: marker
        cache: dict[tuple[str, Identity], str] = {}

        def pseudonym(owner: _Owner) -> str:
            # A value two requests of the batch share gets the first request's pseudonym:
            # deterministic, so a rerun writes the same bytes.
            rid = owner.request_ids[0]
            key = (rid, owner.identity)
            if key not in cache:
                pseudonymize = pseudonymizers.get(rid)
                if pseudonymize is None:
                    raise LogsError(f"systems.{self.name}: no pseudonym key for request {rid}")
                cache[key] = pseudonymize(owner.identity.value) or ""
            return cache[key]

        return pseudonym

    def _batch(
        self, subjects: Sequence[Subject], pseudonymizers: Mapping[str, Pseudonymizer]
    ) -> str:
        """A fingerprint of the batch: its requests and, keyed under each request's key,
        their identities (plain hashes of identities would be reversible)."""
        items = []
        for s in subjects:
            p = pseudonymizers.get(s.request_id)
            for ident in s.identities:
                items.append(f"{s.request_id}\x00{ident.type.value}\x00"
                             f"{p(ident.type.value + ':' + ident.value) if p else ''}")
        items.append(f"{self.system.action.value}\x00{self.system.redact_with}")
        return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:32]

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One erasure per system at a time (across processes sharing state_dir)."""
        with open(self.state_dir / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _copy_lock(self, shared: bool) -> Iterator[None]:
        """Held exclusively while a file is copied into its inode, shared while collect or
        verify read: they never read a file half copied."""
        with open(self.state_dir / ".in-place.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Around collect and verify: an in-place rewrite a crash interrupted is finished
        first (a half-copied file is nobody's data), and none starts while they read."""
        if all(source.path is None for source in self.system.sources.values()):
            yield  # S3 only: nothing is rewritten in place
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if any(self._pending_dir.glob(f".*{PENDING_SUFFIX}.json")):
            with self._lock():
                self._finish_in_place_copies()
        with self._copy_lock(shared=True):
            yield

    def _remove_stale_temps(self) -> None:
        directories = {str(self.state_dir / "tmp"), str(self._pending_dir)}
        for source in self.system.sources.values():
            if source.path is None:
                continue
            pattern = os.path.join(self.base_dir, source.path)
            for match in globmod.glob(pattern, recursive=True):
                directories.add(os.path.dirname(match) or ".")
                # The new version of a file behind a link is written beside that file.
                directories.add(os.path.dirname(os.path.realpath(match)))
            literal_dir = os.path.dirname(pattern)
            if not globmod.has_magic(literal_dir):
                directories.add(literal_dir or ".")
        for directory in sorted(directories):
            _remove_stale_temps(directory)

    def _error(self, file: _File, operation: str, exc: BaseException) -> LogsError:
        where = f"s3://{file.bucket}/{file.name}" if file.bucket else file.name
        if file.linked:
            where += f" (-> {file.path})"
        return LogsError(
            f"systems.{self.name}.sources.{file.source}: {where}: {operation} failed "
            f"({_code(exc)})"
        )


class _Prefixed:
    """A stream with the bytes already read from its start put back in front."""

    def __init__(self, head: bytes, body: Any) -> None:
        self.head = head
        self.body = body

    def read(self, n: int = -1) -> bytes:
        if self.head:
            head, self.head = self.head, b""
            if n is None or n < 0:
                return head + self.body.read()
            return head + self.body.read(max(n - len(head), 0))
        return bytes(self.body.read() if n is None or n < 0 else self.body.read(n))


def _count(counts: Counts, hits: _LineHits) -> None:
    """A line that mentions a request's subject was found, and rewritten."""
    for rid in hits.request_ids:
        entry = counts.setdefault(rid, [0, 0])
        entry[0] += 1
        entry[1] += 1


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_ino, b.st_size, b.st_mtime_ns)


def _unchanged(before: os.stat_result, after: os.stat_result, covered: int) -> bool:
    """A plain file may have grown while we read it (we read on to its end, `covered`
    bytes); a gzip file (covered -1) may not change at all."""
    return after.st_size == covered if covered >= 0 else _same(before, after)


def _code(exc: BaseException) -> str:
    """An error's kind, never its message (which may quote a value or a key)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}: {os.strerror(exc.errno)}"
    return type(exc).__name__


