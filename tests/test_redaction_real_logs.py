"""Access-package masking on log lines as real services write them (in the style of the
Loghub datasets): the subject's own identifiers and everything that only looks like a
number (IP addresses, timestamps, ids, ports, sizes) stay exactly as they were; other
people's emails and phone numbers are withheld, and counted."""

from __future__ import annotations

from datetime import UTC, datetime

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsrflow.redaction import EMAIL_WITHHELD, PHONE_WITHHELD, mask_others

E, P = EMAIL_WITHHELD, PHONE_WITHHELD

# The subject, normalized as the ledger holds them: two emails, a phone (E.164), a user
# id, a device id and the two addresses they connect from.
OWN = frozenset({
    "li.na@example.com", "li.na+dsr@example.com", "+8613900139000", "u-1001",
    "3f2a9c0e11a4b7d2", "203.0.113.107", "2001:db8::7",
})

NGINX = (
    '203.0.113.107 - - [03/Nov/2026:12:34:56 +0800] "GET /api/invite?from=li.na%40example.com'
    "&reply=mailto%3Ali.na%2Bdsr%40example.com&to=zhang.wei%40example.org"
    '&tel=%2B8613800138000&cb=139%200013%209000 HTTP/1.1" 200 5123 '
    '"https://app.example.com/invite" "Mozilla/5.0 (Linux; Android 14; Pixel 8) '
    'AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.230 Mobile Safari/537.36"'
)
JSON = (
    '{"@timestamp":"2026-11-03T12:34:56.789+08:00","level":"INFO","uid":"u-1001",'
    '"client_ip":"2001:db8::7","peer":"[2001:db8::1]:443","device":"3f2a9c0e11a4b7d2",'
    '"msg":"li.na@example.com shared an album with +86 138 0013 8000 and '
    'wang.fang@example.org","bytes":5123,"ts":1794535895138,'
    '"trace":"550e8400-e29b-41d4-a716-446655440000"}'
)
JAVA = (
    "2026-11-03 12:34:56,789 ERROR [http-nio-8080-exec-7] c.e.dsr.InviteService: "
    "SMS to +44 20 7946 0018 failed for u-1001 on 3f2a9c0e11a4b7d2 since 1794535895138 "
    "(attempt=3, latency=1204 ms) at com.example.dsr.InviteService.send"
    "(InviteService.java:142) ~[app-2.4.1.jar:2.4.1]"
)

# (region, line, expected line, withheld)
REAL_LINES = [
    pytest.param(
        "CN",
        "Dec 10 06:55:46 LabSZ sshd[24200]: Failed password for invalid user webmaster "
        "from 173.234.31.186 port 38926 ssh2",
        None, 0, id="sshd-someone-elses-ip"),
    pytest.param(
        "CN",
        "Dec 10 07:02:11 LabSZ sshd[24311]: Accepted password for lina from 203.0.113.107 "
        "port 51022 ssh2",
        None, 0, id="sshd-own-ip"),
    pytest.param(
        "CN", NGINX,
        NGINX.replace("zhang.wei%40example.org", E).replace("%2B8613800138000", P),
        2, id="nginx-combined"),
    pytest.param(
        "DE",
        "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
        "blk_38865049064139660 terminating",
        None, 0, id="hdfs-stamp"),
    pytest.param(
        "CN",
        "081109 204005 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap "
        "updated: 10.251.73.220:50010 is added to blk_-1608999687919862906 size 91178",
        None, 0, id="hdfs-ip-port-block"),
    pytest.param(
        "JP",
        "03-17 16:13:38.811  1702  2395 D WindowManager: printFreezingDisplayLogsopening app "
        "wtoken = AppWindowToken{9f4ef63 token=Token{a64f992 ActivityRecord{de9231d u0 "
        "com.tencent.qt.qtl/.activity.info.NewsDetailXWebActivity t761}}}",
        None, 0, id="logcat-pid-tid"),
    pytest.param(
        "JP",
        "03-17 16:14:02.100  1702  2395 I ContactsSync: u-1001 added +81 90-1234-5678 "
        "from 3f2a9c0e11a4b7d2",
        f"03-17 16:14:02.100  1702  2395 I ContactsSync: u-1001 added {P} "
        "from 3f2a9c0e11a4b7d2",
        1, id="logcat-someone-elses-phone"),
    pytest.param("CN", JAVA, JAVA.replace("+44 20 7946 0018", P), 1, id="java"),
    pytest.param(
        "CN", JSON,
        JSON.replace("+86 138 0013 8000", P).replace("wang.fang@example.org", E),
        2, id="json"),
]


@pytest.mark.parametrize(("region", "line", "expected", "withheld"), REAL_LINES)
def test_real_log_lines(region: str, line: str, expected: str | None, withheld: int) -> None:
    """Nothing of the subject's and no IP, timestamp, id, port or size is touched; the
    other people's emails and phone numbers are withheld and counted."""
    assert mask_others(line, OWN, region) == (expected or line, withheld)


# Each of these was taken for a phone number in at least one of these regions, except
# the few marked as guards.
NEVER_PHONES = [
    "173.234.31.186", "10.251.73.220:50010", "203.0.113.100", "[2001:db8::f972]:16998",
    "::ffff:198.51.100.101", "fe80::1%eth0",  # guard
    "host-198-51-100-103.example.net", "ip-10-251-73-220.ec2.internal",
    "1.3.6.1.4.1.15120", "628.26.72.895", "2026-08-07T17:08:16.857+08:00",
    "2026-11-03 12:34:56", "20261103T123456", "[03/Nov/2026:12:34:56 +0800]",  # guards
    "081109 203615", "1733212345", "1794535895138", "1733212345.123",
    "blk_38865049064139660", "blk_-1608999687919862906", "0x7f3a1c2e",  # guards
    "04e9689b-0932-4835-a752-a9bb0034e8f7", "port=16805", "port 16834", "pid=352729",
    "size=53276073193", "bytes=13800138000", "uid=1312655935", '"ts": 1794535895138',
    "status=200",  # guard
    "sshd[16996]", '"GET / HTTP/1.1" 200 5005956',
]
REGIONS = ["CN", "US", "DE", "JP", "IN", None]


@pytest.mark.parametrize("value", NEVER_PHONES)
def test_never_taken_for_a_phone_number(value: str) -> None:
    line = f"seen {value} here"
    assert {region: mask_others(line, OWN, region) for region in REGIONS} == {
        region: (line, 0) for region in REGIONS
    }


OWN_PHONES = frozenset({"+8613800138000", "+14155552671"})

OWN_SPELLINGS = [
    ("CN", s) for s in [
        "138 0013 8000", "13800138000", "138-0013-8000", "138.0013.8000", "+86 138 0013 8000",
        "+8613800138000", "+86-138-0013-8000", "0086 138 0013 8000", "86 138 0013 8000",
        "8613800138000", "%2B8613800138000", "138%200013%208000",
    ]
] + [
    ("US", s) for s in [
        "(415) 555-2671", "415-555-2671", "415.555.2671", "4155552671", "+1 415-555-2671",
        "1 (415) 555-2671", "+14155552671",
    ]
] + [
    (None, s) for s in [
        "+86 138 0013 8000", "0086 138 0013 8000", "%2B8613800138000", "+1 415 555 2671",
        "011 1 415 555 2671", "138 0013 8000", "(415) 555-2671",
    ]
]


@pytest.mark.parametrize(("region", "spelling"), OWN_SPELLINGS)
def test_the_subjects_own_phone_stays_in_every_spelling(region: str | None, spelling: str) -> None:
    line = f"sms sent to {spelling}, ok"
    assert mask_others(line, OWN_PHONES, region) == (line, 0)


@pytest.mark.parametrize("spelling", [
    "li.na@example.com", "LI.NA@EXAMPLE.COM", "li.na%40example.com", "Li.Na%40Example.com",
    "mailto%3Ali.na%40example.com", "li.na%2Bdsr%40example.com", "<Li.Na+DSR@example.com>",
])
def test_the_subjects_own_email_stays_in_every_spelling(spelling: str) -> None:
    line = f"GET /u?e={spelling}&x=1"
    assert mask_others(line, OWN, "CN") == (line, 0)


def test_other_peoples_national_numbers_are_read_by_the_region() -> None:
    line = "called (415) 555-0100 and 020 7946 0018"
    assert mask_others(line, OWN, "US") == (f"called {P} and 020 7946 0018", 1)
    assert mask_others(line, OWN, "GB") == (f"called (415) 555-0100 and {P}", 1)


def test_a_dotted_number_is_a_phone_number_only_when_grouped_as_one() -> None:
    line = "client 2.4.1 (build 10.0.19041.1) called 415.555.0100"
    assert mask_others(line, OWN, "US") == (f"client 2.4.1 (build 10.0.19041.1) called {P}", 1)
    assert mask_others(line, OWN, "CN") == (line, 0)


def test_without_a_region_only_international_numbers_are_candidates() -> None:
    """No country to read `020 7946 0018` by: it stays. Written internationally, with `+`,
    `00` or URL-encoded, another person's number is withheld all the same."""
    line = ("call 020 7946 0018, +44 20 7946 0018, 0044 20 7946 0018, tel=%2B442079460018, "
            "or me on 138 0013 8000")
    assert mask_others(line, OWN_PHONES, None) == (
        f"call 020 7946 0018, {P}, {P}, tel={P}, or me on 138 0013 8000", 3)


def test_the_subjects_numeric_ids_stay() -> None:
    """A numeric account id (a QQ number, say) can be a valid phone number where the
    subject lives: it is theirs all the same. Someone else's number of that shape is
    withheld (the safe mistake)."""
    own = frozenset({"2454712010", "qq:3599583794"})
    line = "account 2454712010 linked qq 3599583794 (qq:3599583794), friend 2137877499"
    assert mask_others(line, own, "CN") == (
        f"account 2454712010 linked qq 3599583794 (qq:3599583794), friend {P}", 1)


# -- property: random lines of own, protected and other people's pieces ------------------------

_OWN_PIECES = [
    "li.na@example.com", "LI.NA@Example.com", "li.na%40example.com", "li.na+dsr@example.com",
    "+86 139 0013 9000", "+8613900139000", "u-1001", "3f2a9c0e11a4b7d2", "203.0.113.107",
    "2001:db8::7", "[2001:db8::7]:8443",
]
_REGIONS = ["CN", "US", "GB", "DE", "FR", "IN", "JP", "BR", "AU", "NG", "RU", "KR", "ES"]
_WORDS = ["login", "invited", "ERROR", "shared", "with", "from", "to", "ok", "GET", "INFO",
          "sms", "call", "device", "at", "-", "=", "ts"]


def _international(region: str, kind: int, e164: bool) -> str:
    """Another person's number as they would write it abroad: `+44 7400 123456`."""
    number = phonenumbers.example_number_for_type(region, kind)
    assert number is not None
    formats = phonenumbers.PhoneNumberFormat
    return phonenumbers.format_number(number, formats.E164 if e164 else formats.INTERNATIONAL)


_others_phone = st.one_of(
    st.builds(_international, st.sampled_from(_REGIONS),
              st.sampled_from([phonenumbers.PhoneNumberType.MOBILE,
                               phonenumbers.PhoneNumberType.FIXED_LINE]), st.booleans()),
    st.integers(min_value=0, max_value=99_999_999).map(
        lambda n: f"+86 138 {n // 10_000:04d} {n % 10_000:04d}"),
)
_others_email = st.builds(
    lambda local, domain, encoded: f"{local}{'%40' if encoded else '@'}{domain}",
    st.from_regex(r"[a-z][a-z0-9._]{0,10}[a-z0-9]", fullmatch=True).filter(
        lambda s: not s.startswith("li.na")),
    st.sampled_from(["example.org", "mail.example.net", "qq.com"]), st.booleans(),
)
_when = st.datetimes(min_value=datetime(2001, 9, 10), max_value=datetime(2033, 5, 17),
                     timezones=st.just(UTC))
_protected = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.tuples(st.ip_addresses(v=4), st.integers(1, 65535)).map(lambda p: f"{p[0]}:{p[1]}"),
    st.ip_addresses(v=6).map(str),
    st.tuples(st.ip_addresses(v=6), st.integers(1, 65535)).map(lambda p: f"[{p[0]}]:{p[1]}"),
    st.ip_addresses(v=4).map(lambda ip: f"host-{str(ip).replace('.', '-')}.example.net"),
    # Versions and OIDs (parts of up to three digits: `415.555.2671` is how the US writes
    # a phone number, see below).
    st.lists(st.integers(0, 999), min_size=2, max_size=9).map(
        lambda parts: ".".join(map(str, parts))),
    _when.map(lambda t: t.strftime("%Y-%m-%d %H:%M:%S")),
    _when.map(lambda t: t.isoformat(timespec="milliseconds")),
    _when.map(lambda t: t.strftime("%Y%m%dT%H%M%SZ")),
    _when.map(lambda t: t.strftime("%y%m%d %H%M%S")),
    _when.map(lambda t: t.strftime("[%d/%b/%Y:%H:%M:%S +0000]")),
    _when.map(lambda t: str(int(t.timestamp()))),
    _when.map(lambda t: str(int(t.timestamp() * 1000))),
    st.integers(10**15, 10**19).map(lambda n: f"blk_{n}"),
    st.integers(10**15, 10**19).map(lambda n: f"blk_-{n}"),
    st.uuids().map(str),
    st.binary(min_size=4, max_size=16).map(lambda b: "0x" + b.hex()),
    st.tuples(st.sampled_from(["port", "pid", "bytes", "size", "status", "uid", "src_port",
                               "contentLength", '"ts":']),
              st.integers(0, 10**13)).map(
        lambda kv: f"{kv[0]}{'' if kv[0].endswith(':') else '='}{kv[1]}"),
)
# A piece is ("own" | "protected" | "word" | "email" | "phone", text).
_piece = st.one_of(
    st.sampled_from(_OWN_PIECES).map(lambda s: ("own", s)),
    _protected.map(lambda s: ("protected", s)),
    st.sampled_from(_WORDS).map(lambda s: ("word", s)),
    _others_email.map(lambda s: ("email", s)),
    _others_phone.map(lambda s: ("phone", s)),
)


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(_piece, min_size=1, max_size=12),
       separator=st.sampled_from([" ", ", ", " | ", "; ", "\t"]),
       region=st.sampled_from([None, "CN", "US", "GB", "DE", "JP", "IN"]))
def test_own_and_protected_pieces_stay_and_others_are_withheld(
    pieces: list[tuple[str, str]], separator: str, region: str | None
) -> None:
    line = separator.join(text for _, text in pieces)
    marker = {"email": EMAIL_WITHHELD, "phone": PHONE_WITHHELD}
    expected = separator.join(marker.get(kind, text) for kind, text in pieces)
    others = sum(kind in marker for kind, _ in pieces)
    assert mask_others(line, OWN, region) == (expected, others)
