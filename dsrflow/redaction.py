"""Other people in a subject's free text: a log line that records the subject inviting a
friend holds the friend's email too. An access package gives the subject their own data,
not someone else's (GDPR art. 15(4), privacy policy 6.6.3 "harm to others"), so free text
going into one has the email addresses and phone numbers that are not the subject's own
withheld. Structured records are left alone: a column says whose value it is.

The two possible mistakes are not equal: withholding one too many of another person's
values is safe; withholding anything of the subject's own is not (it is their data).

- **Emails** are found by a deliberately wide pattern, URL-encoded too (`%40`, `%2B`).
  The subject's own, in any case, stay; every other is withheld.
- **Phone numbers** are found by `phonenumbers`' matcher at `Leniency.VALID` (the number
  must be valid in its numbering plan; a stricter grouping check would let numbers that
  people group their own way through). National formats are read by `region` (ISO 3166
  alpha-2). With `region=None` (GDPR has no single country) a national number cannot be
  read, so only numbers written internationally (`+44 20 7946 0018`, `0044 …`,
  URL-encoded `%2B44…`) are candidates, and `020 7946 0018` stays as written. A number
  that is the subject's stays in any spelling: same E.164, or the same digits as one of
  its spellings (`identities.phone_variants`: national, with country code, `00`…).
- **Never a phone number.** Before the matcher reads a line, these spans are found by
  their structure and blanked out of what it reads, so no match can overlap one or glue
  its digits onto a neighbour's:
  IP addresses (IPv4, IPv6, confirmed by `ipaddress`; with `:port`, `[v6]:port`, a zone;
  the dashed reverse-DNS spelling `host-203-0-113-7.example.net`); numbers joined by
  colons (times, `ip:port`); dates (`2026-11-03`, `03.11.2026`, `10/Oct/2026`), time-zone
  offsets, compact stamps (`20261103T123456`, HDFS `081109 203615`); digit runs longer
  than any phone number; UUIDs; digits glued to Latin letters or `_` (ids, hex, `x64`,
  `blk_-160899…`); log-format fields (logcat's pid and tid, a combined access log's status
  and bytes, `sshd[24200]`); the subject's own emails, and their other identities (user
  and device ids, IP addresses, phone in E.164, the id of a `provider:id` login) as whole
  tokens; then the value of a key that is clearly not a phone (`port=`, `pid=`, `bytes=`,
  `size=`, `status=`, `uid=`, `"ts": …`, `port 38926`; not `tel=`).
  Dotted numbers (versions, OIDs) and epoch seconds or milliseconds (ten or thirteen
  digits starting with 1: 2001 to 2033) are blanked too, except where a run is a group
  of a longer number that is valid only with it (`0800 1234567890`, `+687 75.12.34`),
  and a dotted number grouped exactly as its country writes a valid phone number
  (`415.555.2671` in the US) is read as one.

What is none of these is left to the matcher: it decides what a phone number is; this
module only keeps it from reading what is known to be something else.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from urllib.parse import unquote

import phonenumbers

from dsrflow.identities import IdentityError, normalize_email, phone_variants

EMAIL_WITHHELD = "[email of another person withheld]"
PHONE_WITHHELD = "[phone number of another person withheld]"

# `%40`: the URL-encoded spelling access logs hold in query strings; `%2B` a `+` in a local
# part. The look-behinds keep a preceding escape (`mailto%3Ali.na%40…`) out of the address.
_EMAIL = re.compile(
    r"(?<!%)(?<!%[0-9A-Fa-f])(?:[\w.+-]|%2[Bb])+(?:@|%40)[\w-]+(?:\.[\w-]+)+"
)

# What the matcher reads instead of a protected span: neither digit, Latin letter nor phone
# punctuation, so it neither extends nor (at Leniency.VALID) vetoes a neighbouring number.
_BLANK = "\x00"

Span = tuple[int, int]
# A pattern, and what else its match must be (None: the pattern says it all).
Keep = Callable[[re.Match[str], str | None], bool]
Rule = tuple[re.Pattern[str], Keep | None]


@dataclass(frozen=True)
class _Own:
    """The subject's identities, sorted by how free text can spell them."""

    emails: frozenset[str]
    phones: frozenset[str]  # E.164
    phone_digits: frozenset[str]  # every spelling of those, digits only
    literals: re.Pattern[str] | None  # everything else (and the E.164 forms), as given


@lru_cache(maxsize=64)  # one subject's package masks many lines with the same identities
def _own(own: frozenset[str]) -> _Own:
    emails, phones, literals = set(), set(), set()
    for value in own:
        if "@" in value:
            emails.add(value.casefold())
        elif _is_e164(value):
            phones.add(value)
            literals.add(value)
        elif value:
            literals.add(value)
            # A third-party login (`qq:2454712010`) is logged by its id alone.
            provider, sep, openid = value.partition(":")
            if sep and openid and re.fullmatch(r"[a-z][\w.-]*", provider) and not _is_ip(value):
                literals.add(openid)
    # Every spelling of the subject's own numbers, national ones included (read in the
    # number's own country): keeping one of the subject's own visible is never a leak.
    digits = {re.sub(r"\D", "", v) for p in phones for v in phone_variants(p, _home(p))}
    # Whole tokens only; longest first, so an id that contains a shorter one is found whole.
    alternatives = "|".join(re.escape(v) for v in sorted(literals, key=len, reverse=True))
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)") if literals else None
    return _Own(frozenset(emails), frozenset(phones), frozenset(digits), pattern)


def _home(e164: str) -> str | None:
    """The country a number belongs to (where its national spellings mean it)."""
    return phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))


def _is_e164(value: str) -> bool:
    if not re.fullmatch(r"\+\d{4,15}", value):
        return False
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(value, None))
    except phonenumbers.NumberParseException:
        return False


def mask_others(text: str, own: Iterable[str], region: str | None) -> tuple[str, int]:
    """`text` with the emails and phone numbers that are not the subject's withheld, and
    how many were.

    `own` holds the subject's normalized identities (emails casefolded, phones E.164,
    user ids, device ids and IP addresses as given); none of them is ever withheld.
    `region` (ISO 3166 alpha-2) is how national-format phone numbers are read; with
    None only numbers written internationally (`+44 20 7946 0018`, `0044…`, `%2B44…`)
    are candidates, since a national number cannot be read without a country. IP
    addresses, dates and times, versions, ids and the other spans listed in the module
    docstring are never taken for phone numbers.
    """
    mine = _own(frozenset(own))
    text, emails = _withhold_emails(text, mine)
    if not any(c.isdigit() for c in text):
        return text, emails
    text, phones = _withhold_phones(text, mine, region)
    return text, emails + phones


# -- emails ----------------------------------------------------------------------------------


def _withhold_emails(text: str, mine: _Own) -> tuple[str, int]:
    withheld = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal withheld
        if _is_own_email(match.group(0), mine):
            return match.group(0)
        withheld += 1
        return EMAIL_WITHHELD

    return _EMAIL.sub(replace, text), withheld


def _is_own_email(found: str, mine: _Own) -> bool:
    # The pattern admits only `%40` and `%2B` escapes, so decoding cannot invent anything.
    try:
        return normalize_email(unquote(found)) in mine.emails
    except IdentityError:
        return False


# -- phone numbers ---------------------------------------------------------------------------


def _withhold_phones(text: str, mine: _Own, region: str | None) -> tuple[str, int]:
    view, starts = _readable(text, region)
    pieces, last, withheld = [], 0, 0
    for found in _matches(_without_non_phones(view, mine, region), region):
        if _is_own_phone(found, mine):
            continue
        start, end = starts[found.start], starts[found.end]
        pieces += [text[last:start], PHONE_WITHHELD]
        last = end
        withheld += 1
    return "".join(pieces) + text[last:], withheld


def _without_non_phones(view: str, mine: _Own, region: str | None) -> str:
    """`view` with what is known not to be a phone number blanked out (the module
    docstring lists it), so that no match can overlap it or glue digits onto it."""
    blanked = _blank(view, [*_spans(view, _NEVER_PHONES, region), *_own_spans(view, mine)])
    # After the rest: `port=2672000000 10.0.0.1` is a key's value followed by an address,
    # not a number in groups.
    blanked = _blank(blanked, _spans(blanked, _KEY_VALUES, region))
    unlikely = list(_spans(blanked, _UNLIKELY_PHONES, region))
    grouped = [span for span in unlikely if _beside_digits(span, blanked)]
    blanked = _blank(blanked, [span for span in unlikely if span not in grouped])
    if not grouped:
        return blanked
    # An epoch-like or dotted run next to other digits is a number's group only where the
    # matcher reads it as part of a longer number and nothing valid is left without it
    # (`0800 1234567890`, `+687 75.12.34`; not `+49 30 123456 1.0`).
    without = [(m.start, m.end) for m in _matches(_blank(blanked, grouped), region)]
    needed = [(m.start, m.end) for m in _matches(blanked, region)
              if not any(a < m.end and m.start < b for a, b in without)]
    return _blank(blanked, [span for span in grouped if not _inside(span, needed, blanked)])


def _beside_digits(span: Span, text: str) -> bool:
    start, end = span
    return bool(re.search(r"\d[\s().\-/]{0,3}$", text[max(0, start - 4):start])
                or re.match(r"[\s().\-/]{0,3}\d", text[end:end + 4]))


def _matches(text: str, region: str | None) -> Iterator[phonenumbers.PhoneNumberMatch]:
    return iter(phonenumbers.PhoneNumberMatcher(text, region,
                                                leniency=phonenumbers.Leniency.VALID))


def _blank(text: str, spans: Iterable[Span]) -> str:
    chars = list(text)
    for start, end in spans:
        chars[start:end] = _BLANK * (end - start)
    return "".join(chars)


def _inside(span: Span, matches: list[Span], text: str) -> bool:
    """Whether a match holds `span` and digits beyond it."""
    start, end = span
    return any(a <= start and end <= b and any(c.isdigit() for c in text[a:start] + text[end:b])
               for a, b in matches)


def _is_own_phone(found: phonenumbers.PhoneNumberMatch, mine: _Own) -> bool:
    e164 = phonenumbers.format_number(found.number, phonenumbers.PhoneNumberFormat.E164)
    return e164 in mine.phones or re.sub(r"\D", "", found.raw_string) in mine.phone_digits


# URL-encoded `+` and space, as in a query string `tel=%2B44%2020%207946%200018`.
_ENCODED = {"%2B": "+", "%2b": "+", "%20": " "}
_PERCENT = re.compile("|".join(_ENCODED))
# `00` + country code: the international prefix of most of the world, but one the matcher
# reads only where the region dials it; with no region, it is how `+` is typed. Only at the
# start of a number: the `00` of `7946 0018` is a group of the number before it.
_IDD_00 = re.compile(r"(?<![\w.:+/-])(?<!\d\s)(?<!\d\)\s)00(?=[1-9])")


def _readable(text: str, region: str | None) -> tuple[str, list[int]]:
    """`text` as the matcher should read it, and where each of its characters (and its
    end) starts in `text`."""
    view, starts = _rewrite(text, list(range(len(text) + 1)), _PERCENT,
                            lambda m: _ENCODED[m.group(0)])
    if region is None:
        view, starts = _rewrite(view, starts, _IDD_00, lambda m: "+")
    return view, starts


def _rewrite(
    text: str, starts: list[int], pattern: re.Pattern[str], one: Callable[[re.Match[str]], str]
) -> tuple[str, list[int]]:
    """Each match of `pattern` replaced by one character, keeping `starts` in step."""
    out, new, last = [], [], 0
    for match in pattern.finditer(text):
        out += [text[last:match.start()], one(match)]
        new += [*starts[last:match.start()], starts[match.start()]]
        last = match.end()
    out.append(text[last:])
    new += starts[last:]
    return "".join(out), new


# -- what is never a phone number ------------------------------------------------------------


def _spans(view: str, rules: list[Rule], region: str | None) -> Iterator[Span]:
    for pattern, keep in rules:
        group = "p" if "p" in pattern.groupindex else 0
        match = pattern.search(view)
        while match:
            if keep is None or keep(match, region):
                yield match.span(group)
                match = pattern.search(view, max(match.end(), match.start() + 1))
            else:
                # A rejected match may overlap the real one: `123456 010910 000000`.
                match = pattern.search(view, match.start() + 1)


def _own_spans(view: str, mine: _Own) -> Iterator[Span]:
    # Whatever email is left is the subject's own: its digits are not a phone number.
    for match in _EMAIL.finditer(view):
        yield match.span()
    if mine.literals is not None:
        for match in mine.literals.finditer(view):
            yield match.span()


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _ip(match: re.Match[str], region: str | None) -> bool:
    return _is_ip(match.group("a"))


def _dashed_ipv4(match: re.Match[str], region: str | None) -> bool:
    return _is_ip(match.group(0).replace("-", "."))


def _dotted(match: re.Match[str], region: str | None) -> bool:
    """A dotted number is protected unless it is a phone number grouped exactly as it is
    written in its country (`415.555.2671` in the US, `+33.1.23.45.67.89`): that shape
    is a phone's, and missing another person's number is the unsafe mistake."""
    run = match.group(0)
    if _is_ip(run):
        return True
    try:
        number = phonenumbers.parse(run, region)
    except phonenumbers.NumberParseException:
        return True
    if not phonenumbers.is_valid_number(number):
        return True
    groups = run.lstrip("+").split(".")
    formats = (phonenumbers.PhoneNumberFormat.NATIONAL,
               phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return all(re.findall(r"\d+", phonenumbers.format_number(number, f)) != groups
               for f in formats)


def _is_date(year: str, month: str, day: str) -> bool:
    try:
        datetime(int(year), int(month), int(day))
    except ValueError:
        return False
    return True


def _ymd(match: re.Match[str], region: str | None) -> bool:
    return _is_date(match.group("y"), match.group("m"), match.group("d"))


def _dmy(match: re.Match[str], region: str | None) -> bool:
    # Day first or month first: either reading that is a date makes it one.
    a, b, y = match.group("a"), match.group("b"), match.group("y")
    return _is_date(y, b, a) or _is_date(y, a, b)


def _compact_stamp(match: re.Match[str], region: str | None) -> bool:
    date = match.group("d")
    try:
        year = "%y" if len(date) == 6 else "%Y"
        datetime.strptime(date + match.group("t"), year + "%m%d%H%M%S")
    except ValueError:
        return False
    return True


def _uuid(match: re.Match[str], region: str | None) -> bool:
    try:
        uuid.UUID(match.group(0))
    except ValueError:
        return False
    return True


# Keys whose value is a count, a size, a code, a time or an id: never a phone number. A key
# is split into words (`src_port`, `bytesSent`, `Content-Length`); any of these words makes
# it one, unless a word says phone.
_NOT_PHONE_KEYS = frozenset({
    "port", "pid", "ppid", "tid", "uid", "gid", "euid", "bytes", "byte", "size", "len",
    "length", "status", "code", "count", "ms", "us", "ns", "sec", "secs", "seconds",
    "duration", "elapsed", "latency", "took", "time", "ts", "timestamp", "epoch", "date",
    "offset", "seq", "line", "lineno", "version", "ver", "rc", "errno", "exit", "id", "ids",
    "block", "blk", "inode", "ino", "thread", "txid", "xid", "pos", "index", "idx", "limit",
    "page", "total", "retries", "attempt", "ttl", "timeout", "width", "height",
})
_PHONE_WORDS = frozenset({
    "phone", "tel", "telephone", "mobile", "msisdn", "cell", "cellphone", "fax", "sms",
    "whatsapp", "contact",
})


def _not_a_phone_key(match: re.Match[str], region: str | None) -> bool:
    words = {w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", match.group("k"))}
    return bool(words & _NOT_PHONE_KEYS) and not words & _PHONE_WORDS


_D = r"(?<![\w.+-])"  # a number starts here: not inside a word, a dotted run or after `+`

_NEVER_PHONES: list[Rule] = [
    # IPv4, with a port.
    (re.compile(r"(?<![\w.])(?P<a>\d{1,3}(?:\.\d{1,3}){3})(?::\d{1,5})?(?![\w.]?\d)"), _ip),
    # IPv6: bare, with a zone, or `[v6]:port`.
    (re.compile(r"\[(?P<a>[0-9A-Fa-f:.]+(?:%[\w.-]+)?)\](?::\d{1,5})?"), _ip),
    (re.compile(r"(?<![\w:.])(?P<a>[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"
                r"(?:\.\d{1,3}){0,3}(?:%[\w.-]+)?)(?![\w:])"), _ip),
    # Reverse DNS: `host-203-0-113-7.example.net`.
    (re.compile(r"(?<![\d.])(?<!\d-)\d{1,3}(?:-\d{1,3}){3}(?!-?\d)"), _dashed_ipv4),
    # Numbers joined by colons: times, `ip:port`, `0:00:12`; no phone is written so.
    (re.compile(r"\d+(?::\d+)+(?:[.,]\d+)?"), None),
    # Dates: 2026-11-03, 2026/11/03, 03.11.2026, 11/03/2026, 10/Oct/2026.
    (re.compile(_D + r"(?P<y>(?:19|20)\d\d)([-/.])(?P<m>\d{1,2})\2(?P<d>\d{1,2})(?!\d)"), _ymd),
    (re.compile(_D + r"(?P<a>\d{1,2})([-/.])(?P<b>\d{1,2})\2(?P<y>(?:19|20)\d\d)(?!\d)"), _dmy),
    (re.compile(r"(?<!\d)\d{1,2}/[A-Z][a-z]{2}/\d{4}"), None),
    # Compact date and time: `20261103T123456` (also glued), HDFS `081109 203615`.
    (re.compile(r"(?<![\d+])(?P<d>\d{6}|\d{8})[ T]?(?P<t>\d{6})(?!\d)"), _compact_stamp),
    # Time-zone offset after a time: `12:34:56 +0800`.
    (re.compile(r"(?<=\d\d:\d\d)(?:[.,]\d+)?\s?[+-]\d{2}:?\d{2}(?!\d)"), None),
    # Longer than any number with its country code (15 digits; 17 with `00`).
    (re.compile(r"(?<![\d+])(?:(?!00)\d{16,}|\d{18,})(?!\d)"), None),
    # UUIDs, before the word rule below splits them at their dashes.
    (re.compile(r"(?<![\w-])[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}(?![\w-])"),
     _uuid),
    # Digits glued to Latin letters or `_` (ids, hex, `x64`), and `blk_-1608…`.
    (re.compile(r"(?<!\w)(?=\w*[A-Za-z_])(?=\w*\d)\w+"), None),
    (re.compile(r"(?<!\w)\w*_-\d+"), None),
    # Android logcat (threadtime): `03-17 16:13:38.811  1702  2395 D Tag`.
    (re.compile(r"(?<![\w-])\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d{3}\s+\d+\s+\d+\s+[VDIWEFAS](?=\s)"),
     None),
    # Combined access log: `"GET / HTTP/1.1" 200 5123`.
    (re.compile(r"HTTP/\d(?:\.\d)?\"\s+\d{3}\s+(?:\d+|-)"), None),
    # A syslog tag's process id: `sshd[24200]`.
    (re.compile(r"(?<!\w)[A-Za-z][\w./-]*\[\d+\]"), None),
]

# Probably not a phone number, but a group of one can look the same: blanked unless the
# matcher reads the run as part of a longer number.
_UNLIKELY_PHONES: list[Rule] = [
    # Dotted numbers: versions, OIDs, `1733212345.123`.
    (re.compile(r"(?<![\w.])\+?\d+(?:\.\d+)+(?!\.?\d)"), _dotted),
    # Epoch seconds and milliseconds, 2001-09-09 to 2033-05-18.
    (re.compile(r"(?<![\d+])1\d{9}(?:\d{3})?(?!\d)"), None),
]

_KEY = r"(?<![\w.-])(?P<k>[A-Za-z][\w.-]*)"
_KEY_VALUES: list[Rule] = [
    # `key=value`, `"key": value`, for a key that is no phone.
    (re.compile(_KEY + r"[\"']?\s*[=:]\s*[\"']?(?P<p>-?\d+(?:\.\d+)*)(?![\w.])"),
     _not_a_phone_key),
    # `port 38926`; but a value followed by one separator and more digits is a number
    # in groups (`id 138 0013 8000`), not this key's.
    (re.compile(_KEY + r"\s+(?P<p>\d+)(?![\w.]|[ -]\d)"), _not_a_phone_key),
]
