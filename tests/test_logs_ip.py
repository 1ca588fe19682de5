"""IP addresses as an identity in logs: IPv4 and IPv6 read by `ipaddress`, whole tokens
only, their reverse-DNS spellings, in text and JSON-lines sources; what erasure writes,
what verification and collection find; look-alikes that stay byte-identical; how many
lines the prefilter hands to stage 2; and a property test over random lines mixing the
batch's IPs and phones (by region) with other people's and with look-alikes."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.logs import LogsConnector
from connectors.logs import matching as logs_matching
from connectors.logs import prefilter as logs_prefilter
from dsrflow.crypto import is_pseudonym
from dsrflow.datamap import LogsSystem
from dsrflow.identities import Identity, IdentityError, IdentityType, Subject, normalize_ip
from tests.logfiles import keys_for, pseudonym, remaining, write

V4 = "203.0.113.7"
SHORT = "1.2.3.4"
V6 = "2001:db8::1"

TEXT = {"path": "logs/*.log", "format": "text", "identities": ["ip"]}
JSONL = {"path": "app/*.jsonl", "format": "jsonl",
         "fields": {"client.ip": "ip", "forwarded": "ip", "user.phone": "phone"}}


def person(rid: str, *ips: str, phone: str | None = None, region: str | None = None,
           ) -> Subject:
    identities = [Identity.read(IdentityType.IP, ip) for ip in ips]
    if phone is not None:
        identities.append(Identity.read(IdentityType.PHONE, phone, region))
    return Subject(request_id=rid, phone_region=region, identities=tuple(identities))


def connector(base: Path, **sources: Any) -> LogsConnector:
    spec = LogsSystem.model_validate({"kind": "logs", "sources": sources or {"access": TEXT}})
    return LogsConnector("applogs", spec, base_dir=base, state_dir=base / ".state")


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


# Real-looking lines (Loghub's nginx, OpenSSH and Apache samples, with documentation
# addresses). Other people: 198.51.100.23, 192.0.2.44, 2001:db8::2.
NGINX = ('{ip} - - [03/Dec/2026:10:00:00 +0000] "GET /api/v1/geo?ip={q}&lang=en HTTP/1.1" '
         '200 512 "-" "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0.6099.109"')
SSHD = ("Dec  3 10:00:01 LabSZ sshd[24200]: Failed password for invalid user admin from {ip} "
        "port 38926 ssh2")
SSHD_RDNS = ("Dec  3 10:00:02 LabSZ sshd[24201]: reverse mapping checking getaddrinfo for "
             "{name} [{ip}] failed - POSSIBLE BREAK-IN ATTEMPT!")
XFF = ('Dec  3 10:00:03 edge haproxy[901]: {ip}:51812 [03/Dec/2026:10:00:03.112] fe be/s1 '
       '0/0/1/12/13 200 1024 - - ---- 1/1/0/0/0 0/0 {{X-Forwarded-For: {xff}}} "GET / HTTP/1.1"')


# -- the subject's lines, in the formats that write IPs ---------------------------------------
def test_nginx_sshd_haproxy_lines_the_subjects_address_is_replaced_and_nothing_else(
    tmp_path: Path,
) -> None:
    lines = [
        NGINX.format(ip=V4, q="198.51.100.23"),
        NGINX.format(ip="198.51.100.23", q=V4),
        NGINX.format(ip="198.51.100.23", q="192.0.2.44"),
        SSHD.format(ip=V4),
        SSHD.format(ip="192.0.2.44"),
        SSHD_RDNS.format(name="host-203-0-113-7.example.net", ip=V4),
        SSHD_RDNS.format(name="host-192-0-2-44.example.net", ip="192.0.2.44"),
        XFF.format(ip="192.0.2.44", xff=f"198.51.100.23, {V4}"),
        XFF.format(ip="192.0.2.44", xff="198.51.100.23, 192.0.2.45"),
    ]
    write(tmp_path / "logs/access.log", lines)
    subject = person("r1", V4)
    c = connector(tmp_path)
    assert remaining(c, [subject]) == {"r1": 5}
    found = c.collect([subject], None)["r1"]["access"]
    assert [r["line"] for r in found] == [1, 2, 4, 6, 8]
    key = keys_for(subject)
    outcome = c.erase([subject], None, key)
    assert outcome["r1"].parts["access"].anonymized == 5
    pn = pseudonym(key, "r1", V4)
    new = lines_of(tmp_path / "logs/access.log")
    assert new[0] == lines[0].replace(V4, pn, 1)
    assert new[1] == lines[1].replace(f"ip={V4}&", f"ip={pn}&")
    assert new[3] == lines[3].replace(f"from {V4} port", f"from {pn} port")
    assert new[5] == lines[5].replace("host-203-0-113-7.", f"host-{pn}.").replace(
        f"[{V4}]", f"[{pn}]")
    assert new[7] == lines[7].replace(f", {V4}}}", f", {pn}}}")
    for i in (2, 4, 6, 8):
        assert new[i] == lines[i]  # other people's lines are byte-identical
    assert remaining(c, [subject]) == {"r1": 0}


def test_jsonl_nested_client_ip_and_a_forwarded_chain(tmp_path: Path) -> None:
    lines = [
        json.dumps({"ts": "2026-12-03T10:00:00.112Z", "level": "info", "event": "login",
                    "client": {"ip": V4, "port": 51812}, "forwarded": f"198.51.100.23, {V4}",
                    "msg": f"login from {V4}"}),
        json.dumps({"ts": "2026-12-03T10:00:01.034Z", "client": {"ip": "[2001:DB8::1]:443"},
                    "forwarded": None}),
        json.dumps({"ts": "2026-12-03T10:00:02.551Z", "client": {"ip": "198.51.100.23"},
                    "forwarded": "192.0.2.44", "msg": f"peer {V4} ignored"}),
    ]
    write(tmp_path / "app/app.jsonl", lines)
    subject = person("r1", V4, V6)
    c = connector(tmp_path, app=JSONL)
    assert remaining(c, [subject]) == {"r1": 2}
    key = keys_for(subject)
    c.erase([subject], None, key)
    first, second, _ = (json.loads(x) for x in lines_of(tmp_path / "app/app.jsonl"))
    assert is_pseudonym(first["client"]["ip"]) and first["client"]["port"] == 51812
    assert first["forwarded"] == f"198.51.100.23, {pseudonym(key, 'r1', V4)}"
    assert first["msg"] == f"login from {V4}"  # an undeclared field is not searched
    assert second["client"]["ip"] == f"[{pseudonym(key, 'r1', V6)}]:443"
    assert lines_of(tmp_path / "app/app.jsonl")[2] == lines[2]
    assert remaining(c, [subject]) == {"r1": 0}


# -- whole tokens --------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "1.2.3.4", "1.2.3.4:443", "client=1.2.3.4,", '"1.2.3.4"', "1.2.3.4/32", "for=1.2.3.4;",
    "X-Forwarded-For: 9.9.9.9, 1.2.3.4", "(1.2.3.4)", "<1.2.3.4>", "ip=1.2.3.4&x=1",
    "from 1.2.3.4.", "1.2.3.4/24", "next=%2F%3Fip%3D1.2.3.4", "::ffff:1.2.3.4",
    "[::ffff:1.2.3.4]:80", "ip-1-2-3-4.ec2.internal", "4.3.2.1.in-addr.arpa",
    "4.3.2.1.IN-ADDR.ARPA.", "1.2.3.4.nip.io",
])
def test_the_address_as_a_whole_token(tmp_path: Path, text: str) -> None:
    line = f"Dec  3 10:00:00 gw kernel: x {text} y"
    write(tmp_path / "logs/a.log", [line])
    subject = person("r1", SHORT)
    c = connector(tmp_path)
    assert remaining(c, [subject]) == {"r1": 1}
    c.erase([subject], None, keys_for(subject))
    new = lines_of(tmp_path / "logs/a.log")[0]
    assert "pn_" in new and new.startswith("Dec  3 10:00:00 gw kernel: x ")
    assert not re.search(r"(?<![0-9])1[.-]2[.-]3[.-]4(?![0-9])", new)
    assert "4.3.2.1" not in new
    assert remaining(c, [subject]) == {"r1": 0}


LOOKALIKES = [
    "11.2.3.45", "1.2.3.4.5", "1.2.3.40", "v1.2.3.4", "x1.2.3.4", "5.1.2.3.4", "01.2.3.4",
    "1.2.3.0/24", "1.2.3.4-1.2.3.9", "1.2.3.0-1.2.3.4", "1-2-3-40.example", "21-2-3-4.isp",
    "5-1-2-3-4.isp", "1.2.3.4.in-addr.arpa", "version 1.2.3.45", "nginx/1.24.0",
    "Chrome/120.0.6099.109", "1.2.3.4x", "1.2.3.4_5",
    "203.0.113.70", "203.0.113.71:443", "203-0-113-70.example", "1203-0-113-7.isp",
    "203-0-113-7-8.isp", "7-113-0-203.dyn.isp.example", "203.000.113.007", "203.0.113.0/24",
    "2001:db8::10", "2001:db8::1:443", "2001:db8::/32", "2001:db8:0:1::1", "[2001:db8::2]:443",
    "2001-db8--2.ipv6-literal.net", "fe80::1%eth0",
    "[03/Dec/2026:10:00:00 +0000]", "10:00:00.123", "2026-12-03T10:00:00.112Z",
    "port 38926", "aa:bb:cc:dd:ee:ff", "std::vector", "sha=2001db8",
]


@pytest.mark.parametrize("text", LOOKALIKES)
def test_lookalikes_stay_byte_identical(tmp_path: Path, text: str) -> None:
    data = write(tmp_path / "logs/a.log", [f"Dec  3 10:00:00 gw app[7]: saw {text} ok"])
    inode = os.stat(tmp_path / "logs/a.log").st_ino
    subjects = [person("r1", SHORT, V4, V6)]
    c = connector(tmp_path)
    assert remaining(c, subjects) == {"r1": 0}
    c.erase(subjects, None, keys_for(*subjects))
    assert (tmp_path / "logs/a.log").read_bytes() == data
    assert os.stat(tmp_path / "logs/a.log").st_ino == inode


# -- reverse DNS and IPv6 spellings --------------------------------------------------------------
@pytest.mark.parametrize(("text", "left"), [
    ("host-203-0-113-7.example.net", "host-{pn}.example.net"),
    ("203-0-113-7.dyn.isp.example", "{pn}.dyn.isp.example"),
    ("ip-203-0-113-7.ec2.internal", "ip-{pn}.ec2.internal"),
    ("c-203-0-113-7.hsd1.ca.comcast.net", "c-{pn}.hsd1.ca.comcast.net"),
    ("ec2-203-0-113-7.compute-1.amazonaws.com", "ec2-{pn}.compute-1.amazonaws.com"),
    ("7.113.0.203.in-addr.arpa", "{pn}.in-addr.arpa"),
    ("203.0.113.7", "{pn}"),
    ("::ffff:203.0.113.7", "{pn}"),
    ("::FFFF:CB00:7107", "{pn}"),
])
def test_reverse_dns_names_of_an_ipv4_address(tmp_path: Path, text: str, left: str) -> None:
    write(tmp_path / "logs/a.log", [SSHD_RDNS.format(name=text, ip="192.0.2.44")])
    subject = person("r1", V4)
    key = keys_for(subject)
    c = connector(tmp_path)
    c.erase([subject], None, key)
    assert lines_of(tmp_path / "logs/a.log")[0] == SSHD_RDNS.format(
        name=left.format(pn=pseudonym(key, "r1", V4)), ip="192.0.2.44")
    assert remaining(c, [subject]) == {"r1": 0}


@pytest.mark.parametrize("text", [
    "2001:db8::1", "2001:DB8::1", "2001:0db8:0:0:0:0:0:1", "2001:db8:0:0:0:0:0:1",
    "2001:0DB8:0000:0000:0000:0000:0000:0001", "[2001:db8::1]:443", "[2001:db8::1]",
    "ip=2001%3Adb8%3A%3A1&x=1", "2001-db8--1.ipv6-literal.net", "2001:db8::1/128",
    "2001:db8::1/64", "ip:2001:db8::1", "remote:2001:db8::1",
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
])
def test_ipv6_spellings(tmp_path: Path, text: str) -> None:
    line = f"Dec  3 10:00:00 gw sshd[1]: Accepted publickey for deploy from {text} port 22"
    write(tmp_path / "logs/a.log", [line])
    subject = person("r1", V6)
    c = connector(tmp_path)
    assert remaining(c, [subject]) == {"r1": 1}
    key = keys_for(subject)
    c.erase([subject], None, key)
    new = lines_of(tmp_path / "logs/a.log")[0]
    pn = pseudonym(key, "r1", V6)
    assert pn in new and "db8" not in new.replace(pn, "").lower().replace("b.d.0", "")
    assert new.startswith("Dec  3 10:00:00 gw sshd[1]: Accepted publickey for deploy from ")
    assert new.endswith(" port 22")
    assert remaining(c, [subject]) == {"r1": 0}


def test_redaction_marker_and_two_subjects_on_one_line(tmp_path: Path) -> None:
    line = XFF.format(ip=V4, xff=f"198.51.100.23, [{V6}]:8443, 192.0.2.44")
    write(tmp_path / "logs/a.log", [line])
    a, b = person("r1", V4), person("r2", V6)
    spec = LogsSystem.model_validate({"kind": "logs", "action": "redact",
                                      "sources": {"access": TEXT}})
    c = LogsConnector("applogs", spec, base_dir=tmp_path, state_dir=tmp_path / ".state")
    assert remaining(c, [a, b]) == {"r1": 1, "r2": 1}
    c.erase([a, b], None, keys_for(a, b))
    assert lines_of(tmp_path / "logs/a.log")[0] == line.replace(V4, "[REDACTED]", 1).replace(
        V6, "[REDACTED]")


# -- the prefilter: short addresses do not make every line a candidate -------------------------
def _nginx_lines(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ip = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}." \
             f"{rng.randrange(1, 255)}"
        if rng.random() < 0.3:  # a global IPv6 address, often from 2001::/16
            ip = str(ipaddress.IPv6Address(
                (rng.choice((0x2001, 0x2001, 0x2A02, 0x2409, 0x2600)) << 112)
                | rng.getrandbits(112)))
        out.append(
            f'{ip} - - [{rng.randrange(1, 29):02d}/Dec/2026:{rng.randrange(24):02d}:'
            f'{rng.randrange(60):02d}:{rng.randrange(60):02d} +0000] "GET /api/v1/items/'
            f'{rng.randrange(10**6)}?page={rng.randrange(1, 9)}&v=1.2.{rng.randrange(9)} HTTP/1.1" '
            f'{rng.choice((200, 204, 304, 404))} {rng.randrange(10**5)} "-" '
            f'"Mozilla/5.0 Chrome/120.0.{rng.randrange(6000, 6200)}.{rng.randrange(200)}" '
            f'{rng.random():.3f}')
    return out


@pytest.mark.parametrize("engine", ["view", "raw"])
def test_short_addresses_make_few_lines_candidates(engine: str) -> None:
    lines = _nginx_lines(20_000, seed=5)
    # Short addresses, IPv6 with few digits, and 200 random ones.
    rng = random.Random(9)
    ips = ["1.2.3.4", "1.1.1.1", "8.8.8.8", "9.9.9.9", "1.0.0.1", "2001:db8::1", "2001:db8::",
           "2001:db8:1::1", "2001::1", "2606:4700:4700::1111"]
    while len(ips) < 300:
        candidate = str(ipaddress.ip_address(rng.getrandbits(32)) if len(ips) < 250 else
                        ipaddress.IPv6Address((0x2001 << 112) | rng.getrandbits(112)))
        with contextlib.suppress(IdentityError):  # an address many people share
            ips.append(normalize_ip(candidate))
    subjects_lines = {
        100: SSHD.format(ip="1.2.3.4"),
        5000: SSHD.format(ip="2001:0:0:0:0:0:0:1"),
        9000: SSHD.format(ip="2001:0db8:0:0:0:0:0:1"),
        15000: SSHD_RDNS.format(name="dns-8-8-8-8.example.net", ip="192.0.2.44"),
    }
    for i, line in subjects_lines.items():
        lines[i] = line
    index = logs_matching._Index.build([person(f"r{i}", ip) for i, ip in enumerate(ips)])
    prefilter = logs_prefilter._Prefilter(index.literals(frozenset({IdentityType.IP})), engine)
    data = ("\n" + "\n".join(lines) + "\n").encode()
    scanned = data.translate(logs_matching.VIEW) if prefilter.wants_view else data
    starts = {data.rfind(b"\n", 0, end - 1) + 1 for end in prefilter.ends(scanned)}
    candidates = {data.count(b"\n", 0, start) - 1 for start in starts}  # line numbers
    mentioning = {
        i for i, line in enumerate(lines)
        if logs_matching._text_mentions(line.encode(), frozenset({IdentityType.IP}), index, True)}
    assert mentioning == set(subjects_lines) and mentioning <= candidates
    # Measured: 15 candidate lines of 20,000 (the 4 above; 11 with an IPv6 group `…db8`).
    assert len(candidates) <= 0.002 * len(lines)


def test_the_engine_is_chosen_by_what_compiling_and_translating_cost() -> None:
    # 100 subjects' IPv4 literals (forward, reversed, mapped): short digit runs between
    # byte classes, slow to compile as raw patterns; a view of 64 MiB is quicker.
    subjects = [person(f"r{i}", f"198.51.{i}.{i + 1}") for i in range(100)]
    literals = logs_matching._Index.build(subjects).literals(frozenset({IdentityType.IP}))
    assert logs_prefilter._engine_for(literals, 64 << 20) == "view"
    assert logs_prefilter._engine_for(literals, 64 << 30) == "raw"
    assert logs_prefilter._engine_for(literals[:4], 64 << 20) == "raw"
    assert logs_prefilter._engine_for(literals, None) == "raw"  # sizes unknown: the count decides
    assert logs_prefilter._engine_for([b"x"] * (logs_prefilter.RAW_MAX + 1), 64 << 30) == "view"


# -- property: nothing of anyone else changes, no spelling of the batch survives ----------------
_ADDRESSES = ["203.0.113.7", "198.51.100.23", "1.2.3.4", "192.0.2.44", "2001:db8::1",
              "2001:db8:85a3::8a2e:370:7334", "2001:db8::2", "8.8.8.8"]
_NUMBERS = [("+442079460018", "GB"), ("+8613800138000", "CN"), ("+14155552671", "US"),
            ("+862079460019", "CN"), ("+442079460099", None), ("+8615012345678", "CN")]
_NOISE = ["GET", "200", "512", "-", "[info]", "port 38926", "11.2.3.45", "1.2.3.4.5",
          "203.0.113.70", "203-0-113-70.example", "v1.2.3.4", "Chrome/120.0.6099.109",
          "[03/Dec/2026:10:00:00 +0000]", "2001:db8::10", "10.0.0.12", "nginx/1.24.0",
          "2026-12-03T10:00:00Z", "size=1024", "x-y", "7-113-0-203.isp"]
_JOINERS = [" ", ", ", "; ", " | ", "\t", "&"]


def _ip_spellings(ip: str) -> list[str]:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv4Address):
        dashed = ip.replace(".", "-")
        reverse = ".".join(reversed(ip.split(".")))
        return [ip, f"{ip}:443", f"for={ip};", f"host-{dashed}.example.net",
                f"{dashed}.dyn.isp.example", f"{reverse}.in-addr.arpa", f"::ffff:{ip}",
                f'"{ip}"']
    exploded = address.exploded
    return [ip, ip.upper(), f"[{ip}]:443", exploded,
            ":".join(h.lstrip("0") or "0" for h in exploded.split(":")),
            ip.replace(":", "%3A"), f"{ip.replace(':', '-')}.ipv6-literal.net"]


def _phone_spellings(e164: str, region: str | None) -> list[str]:
    import phonenumbers

    from dsrflow.identities import reads_nationally

    parsed = phonenumbers.parse(e164)
    cc, nsn = str(parsed.country_code), phonenumbers.national_significant_number(parsed)
    intl = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    out = [e164, f"00{cc}{nsn}", f"tel=%2B{cc}{nsn}", intl, intl.replace(" ", "-")]
    if reads_nationally(e164, region):
        national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
        out += [nsn, national, "".join(c for c in national if c.isdigit())]
    return out


def _segment_in(segment: str, line: str) -> bool:
    return re.search(rf"(?:^|(?<=[ ,;|\t&])){re.escape(segment)}(?=$|[ ,;|\t&])",
                     line) is not None


@st.composite
def _worlds(draw: st.DrawFn) -> tuple[list[Subject], int, list[list[tuple[int, str]]]]:
    n = draw(st.integers(2, 6))
    people = []
    for i in range(n):
        number, region = _NUMBERS[i]
        ips = [_ADDRESSES[i], *([_ADDRESSES[6 + i]] if i < 2 else [])]
        people.append(person(f"r{i}", *ips, phone=number, region=region))
    erased = draw(st.integers(1, n - 1))
    mentions = [(p, s) for p in range(n) for ident in people[p].identities
                for s in (_ip_spellings(ident.value) if ident.type is IdentityType.IP
                          else _phone_spellings(ident.value, people[p].phone_region))]
    segment = st.one_of(st.sampled_from([(-1, x) for x in _NOISE]), st.sampled_from(mentions))
    lines = draw(st.lists(st.lists(segment, min_size=1, max_size=6), min_size=1, max_size=12))
    return people, erased, lines


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(world=_worlds(), seed=st.integers(0, 1000))
def test_property_ips_and_phones_nobody_else_changes_no_spelling_survives(
    tmp_path_factory: pytest.TempPathFactory, world: Any, seed: int,
) -> None:
    people, erased, lines = world
    rng = random.Random(seed)
    texts = []
    for segments in lines:
        text = segments[0][1]
        for _, s in segments[1:]:
            text += rng.choice(_JOINERS) + s
        texts.append(text)
    base = tmp_path_factory.mktemp("ipprop")
    write(base / "logs/a.log", texts)
    source = {**TEXT, "identities": ["ip", "phone"]}
    c = connector(base, access=source)
    subjects = people[:erased]
    c.erase(subjects, None, keys_for(*subjects))
    after = lines_of(base / "logs/a.log")
    for segments, before, now in zip(lines, texts, after, strict=True):
        if not any(0 <= p < erased for p, _ in segments):
            assert now == before
            continue
        for p, spelling in segments:
            if 0 <= p < erased:
                assert not _segment_in(spelling, now), spelling
            elif p >= erased:
                assert _segment_in(spelling, now), spelling  # someone else's: kept
    assert all(v == 0 for v in remaining(c, subjects).values())
