"""Phone numbers in logs are read by region, as `phone_variants` reads them: a number's
national spellings are its subject's only where the region (the logs system's
`phone_region`, else the subject's) dials its country code; elsewhere only its
international spellings are. Real files, lines written the way the services write them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from connectors.logs import LogsConnector
from connectors.logs.matching import _Index
from dsrflow.crypto import is_pseudonym
from dsrflow.datamap import LogsSystem
from dsrflow.identities import Identity, IdentityType, Subject, phone_variants
from tests.logfiles import keys_for, pseudonym, remaining, write

LONDON = "+442079460018"  # 020 7946 0018 in the UK
GUANGZHOU = "+862079460018"  # 020 7946 0018 in China
SAN_FRANCISCO = "+14155552671"  # (415) 555-2671 in the US

TEXT = {"path": "logs/*.log", "format": "text", "identities": ["phone"]}

# A Chinese order service's log: national numbers, as Chinese customers write them.
CHINESE_LOG = [
    "2026-12-03 10:00:00,112 INFO [OrderService] 用户 8800123 下单成功, 联系电话 020 7946 0018,"
    " 订单号 DD202612030001",
    "2026-12-03 10:00:01,034 INFO [SmsSender] 短信已发送 至 138 0013 8000 模板=ORDER_PAID",
    "2026-12-03 10:00:02,551 WARN [Delivery] 配送地址 广州市天河区 电话 02079460018 无人接听",
    "2026-12-03 10:00:03,907 INFO [OrderService] 订单 DD202612030002 已取消",
]


def person(rid: str, phone: str, region: str | None) -> Subject:
    return Subject(request_id=rid, phone_region=region,
                   identities=(Identity(type=IdentityType.PHONE, value=phone),))


def connector(base: Path, **system: Any) -> LogsConnector:
    spec = LogsSystem.model_validate({"kind": "logs", "sources": {"access": TEXT}, **system})
    return LogsConnector("applogs", spec, base_dir=base, state_dir=base / ".state")


# -- a national spelling is not the subject's outside its region -------------------------
@pytest.mark.parametrize("national", ["020 7946 0018", "02079460018", "2079460018",
                                      "020-7946-0018"])
def test_without_a_region_a_national_spelling_is_not_the_subjects(
    tmp_path: Path, national: str,
) -> None:
    # A GDPR request without a country: nothing says where `020 7946 0018` is.
    data = write(tmp_path / "logs/app.log", [f"2026-12-03 10:00:00 INFO callback {national} ok"])
    inode = os.stat(tmp_path / "logs/app.log").st_ino
    gdpr = person("r1", LONDON, None)
    c = connector(tmp_path)
    assert remaining(c, [gdpr]) == {"r1": 0}
    c.erase([gdpr], None, keys_for(gdpr))
    assert (tmp_path / "logs/app.log").read_bytes() == data
    assert os.stat(tmp_path / "logs/app.log").st_ino == inode  # not even rewritten


@pytest.mark.parametrize("spelling", [
    "+442079460018", "442079460018", "00442079460018", "tel=%2B442079460018&x=1",
    "+44 20 7946 0018", "+44-20-7946-0018", "0044 20 7946 0018", "+44 2079460018",
    "+44 (0)20 7946 0018",
])
@pytest.mark.parametrize("region", [None, "GB", "CN"])
def test_international_spellings_are_the_subjects_in_any_region(
    tmp_path: Path, spelling: str, region: str | None,
) -> None:
    line = f"Dec  3 10:00:00 gw sms[411]: delivered to {spelling} id=7741"
    write(tmp_path / "logs/app.log", [line, "Dec  3 10:00:01 gw sms[411]: queue empty"])
    subject = person("r1", LONDON, region)
    c = connector(tmp_path)
    assert remaining(c, [subject]) == {"r1": 1}
    key = keys_for(subject)
    c.erase([subject], None, key)
    new = (tmp_path / "logs/app.log").read_text().split("\n")
    before, _, after = line.partition(spelling.removeprefix("tel="))
    pn = pseudonym(key, "r1", LONDON)
    assert new[0] == f"{before}{pn}{after}" or new[0] == line.replace("%2B442079460018", pn)
    assert new[1] == "Dec  3 10:00:01 gw sms[411]: queue empty"
    assert remaining(c, [subject]) == {"r1": 0}


def test_a_chinese_log_does_not_hold_a_british_subjects_national_number(tmp_path: Path) -> None:
    data = write(tmp_path / "logs/orders.log", CHINESE_LOG)
    gb = person("r1", LONDON, "GB")
    # The data map says these logs write numbers as in China: 020 7946 0018 is Guangzhou.
    c = connector(tmp_path, phone_region="CN")
    assert remaining(c, [gb]) == {"r1": 0}
    c.erase([gb], None, keys_for(gb))
    assert (tmp_path / "logs/orders.log").read_bytes() == data

    # Where the data map does not say, the subject's own region reads it: London.
    assert remaining(connector(tmp_path), [gb]) == {"r1": 2}


def test_a_chinese_subjects_national_number_in_a_chinese_log(tmp_path: Path) -> None:
    write(tmp_path / "logs/orders.log", [*CHINESE_LOG, "2026-12-03 10:00:04,001 INFO [Intl] "
                                         "国际回拨 +44 20 7946 0018 已接通"])
    cn = person("r1", GUANGZHOU, "CN")
    for c in (connector(tmp_path), connector(tmp_path, phone_region="CN")):
        assert remaining(c, [cn]) == {"r1": 2}
    key = keys_for(cn)
    connector(tmp_path).erase([cn], None, key)
    pn = pseudonym(key, "r1", GUANGZHOU)
    new = (tmp_path / "logs/orders.log").read_text(encoding="utf-8").split("\n")
    assert new[0] == CHINESE_LOG[0].replace("020 7946 0018", pn)
    assert new[2] == CHINESE_LOG[2].replace("02079460018", pn)
    assert new[1] == CHINESE_LOG[1] and new[3] == CHINESE_LOG[3]
    assert new[4].endswith("国际回拨 +44 20 7946 0018 已接通")  # London's, not Guangzhou's
    # Logs written in the UK read the same digits as London.
    assert remaining(connector(tmp_path, phone_region="GB"), [cn]) == {"r1": 0}


@pytest.mark.parametrize("foreign", ["+44 20 7946 0018", "0044 20 7946 0018",
                                     "+44 (0)20 7946 0018", "%2B44 20 7946 0018",
                                     "+44-20-7946-0018"])
def test_what_follows_a_country_code_is_that_countrys_number(
    tmp_path: Path, foreign: str,
) -> None:
    # The digits after +44 spell Guangzhou's national number too; they are London's.
    data = write(tmp_path / "logs/app.log", [f"2026-12-03 10:00:00 INFO intl callback {foreign}"])
    cn = person("r1", GUANGZHOU, "CN")
    c = connector(tmp_path, phone_region="CN")
    assert remaining(c, [cn]) == {"r1": 0}
    c.erase([cn], None, keys_for(cn))
    assert (tmp_path / "logs/app.log").read_bytes() == data


def test_a_run_goes_on_after_the_longest_national_number_of_its_country(
    tmp_path: Path,
) -> None:
    # Two numbers one space apart: London's ten national digits, then a Chinese mobile.
    write(tmp_path / "logs/app.log", ["notify +44 20 7946 0018 138 0013 8000 done"])
    cn = person("r1", "+8613800138000", "CN")
    key = keys_for(cn)
    connector(tmp_path).erase([cn], None, key)
    assert (tmp_path / "logs/app.log").read_text() == (
        f"notify +44 20 7946 0018 {pseudonym(key, 'r1', '+8613800138000')} done\n")


def test_a_run_goes_on_after_a_valid_number_of_its_country(tmp_path: Path) -> None:
    # Guangzhou's +86 20 7946 0019 could go on for two more digits; it is valid as it is,
    # so the next group is another number: a British subject's, written nationally.
    write(tmp_path / "logs/app.log", ["forward +86 20 7946 0019 2079460018"])
    gb = person("r1", LONDON, "GB")
    key = keys_for(gb)
    connector(tmp_path).erase([gb], None, key)
    assert (tmp_path / "logs/app.log").read_text() == (
        f"forward +86 20 7946 0019 {pseudonym(key, 'r1', LONDON)}\n")


def test_a_number_both_subjects_read_as_their_own_counts_for_both(tmp_path: Path) -> None:
    write(tmp_path / "logs/app.log", [
        "callback 020 7946 0018 answered",
        "callback +44 20 7946 0018 answered",
        "callback +86 20 7946 0018 answered",
    ])
    gb, cn = person("r1", LONDON, "GB"), person("r2", GUANGZHOU, "CN")
    c = connector(tmp_path)
    assert remaining(c, [gb, cn]) == {"r1": 2, "r2": 2}
    assert remaining(c, [cn, gb]) == {"r1": 2, "r2": 2}
    c.erase([gb, cn], None, keys_for(gb, cn))
    assert remaining(c, [gb, cn]) == {"r1": 0, "r2": 0}


# -- spellings of a US number --------------------------------------------------------------
@pytest.mark.parametrize("spelling", [
    "(415) 555-2671", "(415)555-2671", "415-555-2671", "415 555 2671", "4155552671",
    "+1 (415) 555-2671", "+1(415)555-2671", "+1 415-555-2671", "+14155552671",
])
def test_a_us_subject_in_the_us_and_the_spellings_caught(tmp_path: Path, spelling: str) -> None:
    line = f'203.0.113.9 - - [03/Dec/2026:10:00:00 +0000] "POST /sms" 200 12 to={spelling} ok'
    write(tmp_path / "logs/app.log", [line])
    us = person("r1", SAN_FRANCISCO, "US")
    c = connector(tmp_path)
    assert remaining(c, [us]) == {"r1": 1}
    key = keys_for(us)
    c.erase([us], None, key)
    # The parentheses are part of the mention: nothing of the number is left around it.
    pn = pseudonym(key, "r1", SAN_FRANCISCO)
    assert (tmp_path / "logs/app.log").read_text() == line.replace(spelling, pn) + "\n"


@pytest.mark.parametrize("text", [
    "(415) 555-2671", "415-555-2671", "4155552671",  # national: a US region only
    "415.555.2671",  # dots: IP addresses and versions, never a phone
    "(415) 555-26710", "1(415) 555-2671x", "+1 (415) 555-2672",
])
def test_us_spellings_that_are_not_a_gdpr_subjects(tmp_path: Path, text: str) -> None:
    data = write(tmp_path / "logs/app.log", [f"call {text} now"])
    subject = person("r1", SAN_FRANCISCO, None)
    c = connector(tmp_path)
    c.erase([subject], None, keys_for(subject))
    assert (tmp_path / "logs/app.log").read_bytes() == data


def test_the_dots_spelling_is_not_caught_even_in_the_us(tmp_path: Path) -> None:
    data = write(tmp_path / "logs/app.log", ["call 415.555.2671 now"])
    us = person("r1", SAN_FRANCISCO, "US")
    connector(tmp_path).erase([us], None, keys_for(us))
    assert (tmp_path / "logs/app.log").read_bytes() == data


# -- the index spells what phone_variants spells ------------------------------------------------
@pytest.mark.parametrize("number", [LONDON, GUANGZHOU, SAN_FRANCISCO, "+8613800138000",
                                    "+390612345678", "+61212345678", "+4930123456",
                                    "+12042345678"])
@pytest.mark.parametrize("region", [None, "GB", "CN", "US", "CA", "IT", "AU", "JE", "DE"])
def test_the_index_looks_up_exactly_the_phone_variants(number: str, region: str | None) -> None:
    index = _Index.build([person("r1", number, region)])
    assert set(index.phones) == set(phone_variants(number, region))
    # A system's region, where it gives one, reads the numbers instead of the subject's.
    if region is not None:
        index = _Index.build([person("r1", number, "GB" if region != "GB" else "US")], region)
        assert set(index.phones) == set(phone_variants(number, region))


def test_no_grouped_national_literal_outside_the_region() -> None:
    literals = _Index.build([person("r1", LONDON, None)]).literals(
        frozenset({IdentityType.PHONE}))
    assert b"20 7946 0018" not in literals and b"020 7946 0018" not in literals
    assert b"44 20 7946 0018" in literals
    at_home = _Index.build([person("r1", LONDON, "GB")]).literals(
        frozenset({IdentityType.PHONE}))
    assert b"20 7946 0018" in at_home


def test_a_pseudonym_is_what_replaces_a_number(tmp_path: Path) -> None:
    write(tmp_path / "logs/app.log", ["to (415) 555-2671."])
    us = person("r1", SAN_FRANCISCO, "US")
    connector(tmp_path).erase([us], None, keys_for(us))
    text = (tmp_path / "logs/app.log").read_text()
    assert is_pseudonym(text.removeprefix("to ").removesuffix(".\n"))
