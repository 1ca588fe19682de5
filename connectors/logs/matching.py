"""Identity matching: the batch's identities, every spelling a log line may hold them in,
and what a line mentions (the precise second stage). See `docs/logs-erasure.md`."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes

import phonenumbers

from dsrflow.datamap import LogSource
from dsrflow.identities import Identity, IdentityType, Subject

MAX_PHONE_DIGITS = 17  # 00 + a 3-digit country code + 12 digits
SHORT_ID = 6  # identifiers shorter than this are looked for as whole tokens only
# A glob match whose stat fails with one of these is not a file: a link to nothing.


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
