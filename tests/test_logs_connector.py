"""The logs connector: precision (nobody else's line changes, files of nobody are not even
rewritten), every spelling of an identity, whole-token user ids, JSON-lines fields, gzip,
S3 (versioned buckets lose their old versions), crash and resume, idempotence, keyed
pseudonyms, redaction, and a property test over random log lines."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from connectors.base import Outcome
from connectors.logs import LogsConnector, LogsError
from connectors.logs import connector as logs_connector
from connectors.logs import errors as logs_errors
from connectors.logs import prefilter as logs_prefilter
from connectors.logs import rewrite as logs_rewrite
from dsrflow.crypto import is_pseudonym
from dsrflow.datamap import LogsSystem, parse_datamap
from dsrflow.identities import Identity, IdentityType, Subject
from tests.logfiles import keys_for, write

ZHANG = {"email": "zhang.wei@example.com", "phone": "+8613800138000", "user_id": "12"}
WANG = {"email": "wang.fang@example.org", "phone": "+8615012345678", "user_id": "123"}
LI = {"email": "li.na@example.com", "phone": "+8618612345678", "user_id": "u_77"}

TEXT = {"path": "logs/*.log*", "format": "text",
        "identities": ["email", "phone", "user_id", "device_id"]}
JSONL = {"path": "app/*.jsonl*", "format": "jsonl",
         "fields": {"user.id": "user_id", "user.email": "email", "phone": "phone",
                    "devices": "device_id", "msg": "email"}}


def subject(rid: str, person: dict[str, str], region: str | None = "CN", **extra: str,
            ) -> Subject:
    """A subject of a PIPL request by default: national spellings of +86 numbers are its."""
    values = {**person, **extra}
    return Subject(
        request_id=rid, phone_region=region,
        identities=tuple(Identity(type=IdentityType(t), value=v) for t, v in values.items()),
    )


def connector(base: Path, sources: dict[str, Any] | None = None, client: Any = None,
              **system: Any) -> LogsConnector:
    spec = LogsSystem.model_validate(
        {"kind": "logs", "sources": sources or {"access": TEXT}, **system}
    )
    return LogsConnector("applogs", spec, base_dir=base, state_dir=base / ".state",
                         client=client)


def read_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode().split("\n")


def totals(outcomes: dict[str, Any], attribute: str) -> dict[str, int]:
    return {rid: o.total(attribute) for rid, o in outcomes.items()}


# -- precision ------------------------------------------------------------------------------
def test_only_the_subjects_lines_change_and_files_of_nobody_are_not_rewritten(
    tmp_path: Path,
) -> None:
    lines = [
        '1.2.3.4 - - [01/Nov/2026:10:00:00 +0800] "GET /a?uid=12&email=zhang.wei%40example.com'
        ' HTTP/1.1" 200 512',
        '1.2.3.5 - - [01/Nov/2026:10:00:01 +0800] "GET /a?uid=123&email=wang.fang%40example.org'
        ' HTTP/1.1" 200 12',
        "nobody: 12 abc12 123 10.0.0.12 2026-11-12T10:12:33 size=12 13800138001",
        "sms to +86 150-1234-5678 for uid=123 and zhang.wei@example.com.cn",
        "login user 12 from 138 0013 8000",
    ]
    write(tmp_path / "logs/access.log", lines)
    other = write(tmp_path / "logs/other.log", [lines[1], lines[2], lines[3]])
    other_stat = os.stat(tmp_path / "logs/other.log")
    zhang = subject("r1", ZHANG)
    c = connector(tmp_path)

    outcomes = c.erase([zhang], None, keys_for(zhang))

    after = read_lines(tmp_path / "logs/access.log")
    assert after[1:4] == lines[1:4]  # Wang's, nobody's, a lookalike domain and numbers
    for changed in (after[0], after[4]):
        # Pseudonyms are random hex, so look for the identities, not for digit runs.
        without_pseudonyms = re.sub(r"pn_[0-9a-f]{24}", "<pn>", changed)
        assert "zhang" not in without_pseudonyms
        assert "138" not in without_pseudonyms and " 12 " not in without_pseudonyms
    assert after[0].startswith('1.2.3.4 - - [01/Nov/2026:10:00:00 +0800] "GET /a?uid=pn_')
    assert after[0].endswith(' HTTP/1.1" 200 512')
    # a file without a subject line is not touched at all: same bytes, same inode
    assert (tmp_path / "logs/other.log").read_bytes() == other
    assert os.stat(tmp_path / "logs/other.log").st_ino == other_stat.st_ino
    assert os.stat(tmp_path / "logs/other.log").st_mtime_ns == other_stat.st_mtime_ns
    part = outcomes["r1"].parts["access"]
    assert (part.found, part.anonymized, part.deleted) == (2, 2, 0)
    assert part.statements and all(len(h) == 64 for h in part.statements)
    assert totals(c.verify([zhang], None), "remaining") == {"r1": 0}


@pytest.mark.parametrize("spelling", [
    "Zhang.Wei@Example.COM",
    "ZHANG.WEI@EXAMPLE.COM",
    "email=zhang.wei%40example.com&x=1",
    "email=Zhang.Wei%40Example.com",
    "next=%2Fprofile%3Femail%3Dzhang.wei%40example.com",
    "<zhang.wei@example.com>",
    "13800138000",
    "+8613800138000",
    "8613800138000",
    "008613800138000",
    "138 0013 8000",
    "138-0013-8000",
    "+86 138-0013-8000",
    "+86 138 0013 8000",
    "0086 138 0013 8000",
    "phone=%2B8613800138000&a=b",
    "phone=%2b8613800138000",
    "tel:+86-138-0013-8000.",
    "phone=138+0013+8000",
    "uid=12",
    "uid=12&page=3",
    "user_id: 12,",
    'the "user_id":"12" field',
    "user 12 logged in",
    "GET /users/12/profile",
    "userId=12",
    "device 6BC83D50-7800-42AA-83C6-4395CA3F0493 ok",
    "device 6bc83d50-7800-42aa-83c6-4395ca3f0493 ok",
])
def test_every_spelling_is_found_and_replaced(tmp_path: Path, spelling: str) -> None:
    line = f"2026-11-01T10:00:00Z info {spelling} done"
    write(tmp_path / "logs/a.log", [line, "unrelated 12 line"])
    zhang = subject("r1", ZHANG, device_id="6BC83D50-7800-42AA-83C6-4395CA3F0493")
    c = connector(tmp_path)
    assert totals(c.verify([zhang], None), "remaining") == {"r1": 1}
    assert c.collect([zhang], None)["r1"]["access"] == [
        {"file": "logs/a.log", "line": 1, "text": line}
    ]

    c.erase([zhang], None, keys_for(zhang))

    new = read_lines(tmp_path / "logs/a.log")
    assert new[1] == "unrelated 12 line"
    assert spelling not in new[0] and "pn_" in new[0]
    assert new[0].startswith("2026-11-01T10:00:00Z info ") and new[0].endswith(" done")
    assert totals(c.verify([zhang], None), "remaining") == {"r1": 0}


@pytest.mark.parametrize("text", [
    "uid=123", "uid=1234&x=1", "abc12", "12abc", "uid=12abc", "v1.12", "10.0.0.12",
    "size 12", "12", "id_12", "uid=12.5", "2026-11-12 10:12:33", "/users/123/",
    "u_777", "xu_77", "u_77x", "138001380001", "213800138000", "13800138000123",
    "zhang.wei@example.com.cn", "xzhang.wei@example.com", "zhang.wei@example.co",
    "pn_0123456789abcdef01234567", "[REDACTED]",
])
def test_lookalikes_are_not_mentions(tmp_path: Path, text: str) -> None:
    data = write(tmp_path / "logs/a.log", [f"x {text} y"])
    people = [subject("r1", ZHANG), subject("r3", LI)]
    c = connector(tmp_path)
    assert totals(c.verify(people, None), "remaining") == {"r1": 0, "r3": 0}
    c.erase(people, None, keys_for(*people))
    assert (tmp_path / "logs/a.log").read_bytes() == data


def test_a_long_user_id_is_found_inside_a_percent_encoded_value(tmp_path: Path) -> None:
    # (short ids are looked for between delimiters, and `%3D` is not one: see the module)
    write(tmp_path / "logs/a.log", ["GET /login?next=%2Fitems%3Fuid%3D10012345%26x%3D1 200",
                                    "GET /login?next=%2Fitems%3Fuid%3D100123456 200"])
    person = subject("r1", {"user_id": "10012345"})
    connector(tmp_path).erase([person], None, keys_for(person))
    new = read_lines(tmp_path / "logs/a.log")
    assert new[0].startswith("GET /login?next=%2Fitems%3Fuid%3Dpn_") and new[0].endswith(
        "%26x%3D1 200")
    assert new[1] == "GET /login?next=%2Fitems%3Fuid%3D100123456 200"


def test_a_bare_country_code_apart_from_a_number_is_another_number(tmp_path: Path) -> None:
    write(tmp_path / "logs/a.log", ["count 86 13800138000", "n 86 138 0013 8000 x"])
    zhang = subject("r1", ZHANG)
    connector(tmp_path).erase([zhang], None, keys_for(zhang))
    new = read_lines(tmp_path / "logs/a.log")
    assert new[0].startswith("count 86 pn_") and new[1].startswith("n 86 pn_")
    assert new[1].endswith(" x")


def test_non_numeric_user_ids_are_whole_tokens_anywhere(tmp_path: Path) -> None:
    write(tmp_path / "logs/a.log", ["actor u_77 did x", "actor u_777 did x", "u_77"])
    li = subject("r3", LI)
    c = connector(tmp_path)
    c.erase([li], None, keys_for(li))
    new = read_lines(tmp_path / "logs/a.log")
    assert new[0].startswith("actor pn_") and new[1] == "actor u_777 did x"
    assert is_pseudonym(new[2])


# -- JSON lines -----------------------------------------------------------------------------
def test_jsonl_fields_nested_paths_arrays_and_numbers(tmp_path: Path) -> None:
    lines = [
        json.dumps({"ts": "t1", "user": {"id": 12, "email": "Zhang.Wei@Example.com"},
                    "phone": "+86 138-0013-8000", "devices": ["dev-a", "dev-b"],
                    "msg": "reset sent to zhang.wei@example.com", "note": "12"}),
        json.dumps({"ts": "t2", "user": {"id": 123, "email": "wang.fang@example.org"},
                    "phone": 13800138000, "note": "zhang.wei@example.com in an undeclared field"}),
        json.dumps({"ts": "t3", "user": {"id": "12"}, "phone": None}, ensure_ascii=False),
        '{"ts": "t4", "user": {"id": 7, "email": null}, "msg": "张伟 says hi"}',
        "not json: zhang.wei@example.com",
    ]
    write(tmp_path / "app/app-2026-11-01.jsonl", lines)
    zhang = subject("r1", ZHANG, device_id="dev-b")
    c = connector(tmp_path, {"app": JSONL})
    assert totals(c.verify([zhang], None), "remaining") == {"r1": 4}

    outcomes = c.erase([zhang], None, keys_for(zhang))

    new = read_lines(tmp_path / "app/app-2026-11-01.jsonl")
    first = json.loads(new[0])
    assert is_pseudonym(first["user"]["id"]) and is_pseudonym(first["user"]["email"])
    assert is_pseudonym(first["phone"])
    assert first["devices"][0] == "dev-a" and is_pseudonym(first["devices"][1])
    assert first["msg"].startswith("reset sent to pn_")
    assert first["note"] == "12" and first["ts"] == "t1"  # undeclared fields stay as they are
    second = json.loads(new[1])
    # the number in `phone` is Zhang's: replaced (by a string); Wang's fields stay
    assert is_pseudonym(second["phone"]) and second["user"] == {"id": 123,
                                                                "email": "wang.fang@example.org"}
    assert second["note"] == "zhang.wei@example.com in an undeclared field"
    assert is_pseudonym(json.loads(new[2])["user"]["id"])
    assert new[3] == lines[3]
    assert new[4].startswith("not json: pn_")
    assert outcomes["r1"].parts["app"].anonymized == 4
    assert totals(c.verify([zhang], None), "remaining") == {"r1": 0}


def test_jsonl_keeps_the_rest_of_a_line_byte_for_byte(tmp_path: Path) -> None:
    line = '{"a": 1.50, "user": {"email": "zhang.wei@example.com" }, "z": "\\u00e9"}'
    write(tmp_path / "app/x.jsonl", [line])
    zhang = subject("r1", ZHANG)
    key = keys_for(zhang)
    connector(tmp_path, {"app": JSONL}).erase([zhang], None, key)
    pn = key["r1"]("zhang.wei@example.com")
    assert read_lines(tmp_path / "app/x.jsonl")[0] == line.replace(
        '"zhang.wei@example.com"', f'"{pn}"')


# -- gzip, blocks, line numbers ---------------------------------------------------------------
def test_gzip_in_and_out(tmp_path: Path) -> None:
    lines = ["a zhang.wei@example.com", "b wang.fang@example.org", "c"]
    write(tmp_path / "logs/old.log.gz", lines)
    write(tmp_path / "logs/older.log.gz", ["nobody", "uid=123"])
    untouched_bytes = (tmp_path / "logs/older.log.gz").read_bytes()
    zhang = subject("r1", ZHANG)
    c = connector(tmp_path)
    assert c.collect([zhang], None)["r1"]["access"] == [
        {"file": "logs/old.log.gz", "line": 1, "text": "a zhang.wei@example.com"}
    ]
    c.erase([zhang], None, keys_for(zhang))
    raw = (tmp_path / "logs/old.log.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    new = gzip.decompress(raw).decode().split("\n")
    assert new[0].startswith("a pn_") and new[1:] == ["b wang.fang@example.org", "c", ""]
    assert (tmp_path / "logs/older.log.gz").read_bytes() == untouched_bytes


def test_blocks_carry_lines_across_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              ) -> None:
    monkeypatch.setattr(logs_prefilter, "BLOCK", 7)  # every line spans several blocks
    rng = random.Random(3)
    lines = []
    for i in range(60):
        filler = "x" * rng.randrange(0, 40)
        lines.append(f"{i} {filler} uid=12" if i % 7 == 0 else f"{i} {filler} uid=123")
    write(tmp_path / "logs/a.log", lines, newline_at_end=False)
    zhang = subject("r1", ZHANG)
    c = connector(tmp_path)
    found = c.collect([zhang], None)["r1"]["access"]
    assert [r["line"] for r in found] == [i + 1 for i in range(60) if i % 7 == 0]
    c.erase([zhang], None, keys_for(zhang))
    new = (tmp_path / "logs/a.log").read_bytes().decode().split("\n")
    assert len(new) == 60 and not (tmp_path / "logs/a.log").read_bytes().endswith(b"\n")
    for i, (old, now) in enumerate(zip(lines, new, strict=True)):
        assert (now != old) == (i % 7 == 0)


@pytest.mark.parametrize("engine", ["view", "raw", "re"])
def test_prefilter_engines_agree(tmp_path: Path, engine: str) -> None:
    rng = random.Random(11)
    people = [subject(f"r{i}", {"email": f"user{i}.name@example.com",
                                "phone": f"+86139{i:08d}", "user_id": str(1000 + i)})
              for i in range(30)]
    lines = []
    for n in range(400):
        i = rng.randrange(60)
        lines.append(
            f"{n} uid={1000 + i} email={quote(f'User{i}.Name@example.com', safe='')} "
            f"tel=139 {i:04d} {0:04d} ph=+86139{i:08d}"
        )
    write(tmp_path / "logs/a.log", lines)
    c = connector(tmp_path)
    c.engine = engine
    found = totals(c.verify(people, None), "remaining")
    expected = {f"r{i}": sum(1 for line in lines if f"uid={1000 + i} " in line)
                for i in range(30)}
    assert found == expected


# -- resuming and idempotence ----------------------------------------------------------------
def _three_files(base: Path) -> None:
    for day in (1, 2, 3):
        write(base / f"logs/d{day}.log", [f"day {day} uid=12", "uid=123", f"{day} x"])


def test_crash_part_way_then_rerun_equals_a_clean_run(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    _three_files(clean)
    _three_files(crashed)
    zhang = subject("r1", ZHANG)
    key = keys_for(zhang)
    expected = connector(clean).erase([zhang], None, key)

    real = logs_connector._replace_file
    calls = {"n": 0}

    def failing(tmp: str, path: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("simulated crash")
        real(tmp, path)

    told: list[int] = []

    def progress(outcomes: Mapping[str, Outcome], _piece: str) -> None:
        told.append(outcomes["r1"].total("anonymized"))

    monkeypatch.setattr(logs_connector, "_replace_file", failing)
    with pytest.raises(LogsError, match=r"logs/d2\.log: replace failed"):
        connector(crashed).erase([zhang], None, key, progress=progress)
    monkeypatch.setattr(logs_connector, "_replace_file", real)
    assert read_lines(crashed / "logs/d1.log")[0].startswith("day 1 uid=pn_")
    assert read_lines(crashed / "logs/d2.log")[0] == "day 2 uid=12"  # not replaced
    assert not list((crashed / "logs").glob(".*"))  # the temporary file went away
    assert told == [1]  # d1's line was reported as done before d2 failed

    resumed = connector(crashed).erase([zhang], None, key)

    for day in (1, 2, 3):
        name = f"logs/d{day}.log"
        assert (crashed / name).read_bytes() == (clean / name).read_bytes()
    # The rerun counts what it changed; with what the stopped call reported, a clean run's.
    assert totals(resumed, "anonymized") == {"r1": totals(expected, "anonymized")["r1"] - 1}


def test_a_file_rewritten_but_not_yet_reported_is_reported_by_the_rerun(
    tmp_path: Path,
) -> None:
    """A call stopped between putting a file in place and reporting it (the ledger was
    busy, the process was killed): the batch's rerun reports that file's lines, and not
    the ones reported before."""
    _three_files(tmp_path)
    zhang = subject("r1", ZHANG)
    key = keys_for(zhang)
    told: list[int] = []

    class Stopped(Exception):
        pass

    def progress(outcomes: Mapping[str, Outcome], _piece: str) -> None:
        if told:
            raise Stopped  # the second file is in place; its report never arrives
        told.append(outcomes["r1"].total("anonymized"))

    with pytest.raises(Stopped):
        connector(tmp_path).erase([zhang], None, key, progress=progress)
    resumed = connector(tmp_path).erase([zhang], None, key)
    assert told == [1]
    assert totals(resumed, "anonymized") == {"r1": 2}  # d2 (untold) and d3 (not reached)
    again = connector(tmp_path).erase([zhang], None, key)
    assert totals(again, "anonymized") == {"r1": 0}


def test_a_file_reported_but_not_marked_so_is_not_reported_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call stopped after its report of a file reached the caller and before the
    checkpoint marked the file reported (SIGKILL in between): the rerun is told which
    reports were counted and reports only the rest; a report that never arrived is not
    lost."""
    _three_files(tmp_path)
    zhang = subject("r1", ZHANG)
    key = keys_for(zhang)
    counted: list[str] = []
    told: list[int] = []

    class Killed(Exception):
        pass

    def progress(outcomes: Mapping[str, Outcome], piece: str) -> None:
        counted.append(piece)
        told.append(outcomes["r1"].total("anonymized"))

    def killed_before_telling(self: Any, key: str) -> None:
        raise Killed

    monkeypatch.setattr(logs_rewrite._Checkpoint, "tell", killed_before_telling)
    with pytest.raises(Killed):
        connector(tmp_path).erase([zhang], None, key, progress=progress)
    monkeypatch.undo()
    assert told == [1] and len(counted) == 1  # d1 rewritten and counted by the caller

    resumed = connector(tmp_path).erase([zhang], None, key, progress=progress,
                                        counted=counted)
    assert totals(resumed, "anonymized") == {"r1": 2}  # d2 and d3, not d1 again
    assert len(set(counted)) == 3  # each file counted once
    assert totals(connector(tmp_path).erase([zhang], None, key), "anonymized") == {"r1": 0}


def test_a_killed_run_leaves_a_temporary_file_that_the_next_run_removes(tmp_path: Path) -> None:
    _three_files(tmp_path)
    stale = tmp_path / f"logs/.d1.log.abc{logs_rewrite.TMP_SUFFIX}"
    stale.write_text("day 1 uid=12 (half a copy)")
    zhang = subject("r1", ZHANG)
    c = connector(tmp_path)
    c.erase([zhang], None, keys_for(zhang))
    assert not stale.exists()
    assert totals(c.verify([zhang], None), "remaining") == {"r1": 0}


def test_a_second_run_changes_nothing_and_reports_nothing_changed(tmp_path: Path) -> None:
    _three_files(tmp_path)
    write(tmp_path / "logs/d4.log.gz", ["zhang.wei@example.com 138 0013 8000"])
    zhang = subject("r1", ZHANG)
    key = keys_for(zhang)
    c = connector(tmp_path)
    first = c.erase([zhang], None, key)
    snapshot = {p: (p.read_bytes(), os.stat(p).st_ino, os.stat(p).st_mtime_ns)
                for p in (tmp_path / "logs").iterdir()}
    assert totals(first, "anonymized") == {"r1": 4}
    second = c.erase([zhang], None, key)
    assert totals(second, "anonymized") == totals(second, "found") == {"r1": 0}
    # and without the checkpoint: a fresh look finds nothing, rewrites nothing
    fresh = LogsConnector("applogs", c.system, tmp_path, tmp_path / ".other-state")
    third = fresh.erase([zhang], None, key)
    assert totals(third, "found") == {"r1": 0}
    after = {p: (p.read_bytes(), os.stat(p).st_ino, os.stat(p).st_mtime_ns)
             for p in (tmp_path / "logs").iterdir()}
    assert after == snapshot


def test_lines_appended_during_the_rewrite_are_kept_and_erased(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "logs/live.log"
    write(path, ["uid=12 first", "uid=123 other"])
    real = logs_connector._scan
    appended = {"done": False}

    def scan_then_append(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from real(*args, **kwargs)
        if not appended["done"]:
            appended["done"] = True
            with open(path, "a") as f:
                f.write("uid=12 appended\nuid=123 appended\n")

    monkeypatch.setattr(logs_connector, "_scan", scan_then_append)
    zhang = subject("r1", ZHANG)
    outcomes = connector(tmp_path).erase([zhang], None, keys_for(zhang))
    new = read_lines(path)
    assert new[0].startswith("uid=pn_") and new[1] == "uid=123 other"
    assert new[2].startswith("uid=pn_") and new[3] == "uid=123 appended"
    assert outcomes["r1"].parts["access"].found == 2


def test_a_file_keeps_its_mode_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "logs/a.log"
    write(path, ["uid=12"])
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    zhang = subject("r1", ZHANG)
    connector(tmp_path).erase([zhang], None, keys_for(zhang))
    st = os.stat(path)
    assert st.st_mode & 0o777 == 0o640 and st.st_mtime_ns == 1_700_000_000_000_000_000


def test_without_copy_file_range_the_copy_goes_through_a_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = [f"line {i} uid={12 if i % 50 == 0 else 123}" for i in range(2000)]
    write(tmp_path / "a/logs/a.log", lines)
    write(tmp_path / "b/logs/a.log", lines)
    zhang = subject("r1", ZHANG)
    key = keys_for(zhang)
    connector(tmp_path / "a").erase([zhang], None, key)

    def unsupported(*_args: Any) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    connector(tmp_path / "b").erase([zhang], None, key)
    assert (tmp_path / "a/logs/a.log").read_bytes() == (tmp_path / "b/logs/a.log").read_bytes()
    monkeypatch.delattr(os, "copy_file_range")
    write(tmp_path / "c/logs/a.log", lines)
    connector(tmp_path / "c").erase([zhang], None, key)
    assert (tmp_path / "a/logs/a.log").read_bytes() == (tmp_path / "c/logs/a.log").read_bytes()


def test_bytes_that_are_not_utf8_and_crlf_lines_survive(tmp_path: Path) -> None:
    path = tmp_path / "logs/a.log"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"caf\xe9 uid=12 \xff\r\ncaf\xe9 uid=123 \xff\r\n")
    zhang = subject("r1", ZHANG)
    connector(tmp_path).erase([zhang], None, keys_for(zhang))
    first, second, rest = path.read_bytes().split(b"\r\n")
    assert first.startswith(b"caf\xe9 uid=pn_") and first.endswith(b" \xff")
    assert second == b"caf\xe9 uid=123 \xff" and rest == b""


def test_third_party_openids_and_device_ids_in_text(tmp_path: Path) -> None:
    write(tmp_path / "logs/a.log", ["wechat login openid=oK6sNdVU72lZ-o2_YH19dCqgn28s ok",
                                    "wechat login openid=oK6sNdVU72lZ-o2_YH19dCqgn28sX ok"])
    person = subject("r1", {"third_party": "wechat:oK6sNdVU72lZ-o2_YH19dCqgn28s"})
    system = {"path": "logs/*.log", "format": "text", "identities": ["third_party"]}
    connector(tmp_path, {"access": system}).erase([person], None, keys_for(person))
    new = read_lines(tmp_path / "logs/a.log")
    assert new[0].startswith("wechat login openid=pn_") and new[0].endswith(" ok")
    assert new[1] == "wechat login openid=oK6sNdVU72lZ-o2_YH19dCqgn28sX ok"


def test_an_endpoint_variable_that_is_not_set_is_named(tmp_path: Path) -> None:
    c = connector(tmp_path, {"access": {"s3": {"bucket": "wishe-logs"}, "format": "text",
                                        "identities": ["email"]}},
                  endpoint_url_env="DSRFLOW_TEST_UNSET_ENDPOINT")
    with pytest.raises(logs_errors.LogsConfigError, match="DSRFLOW_TEST_UNSET_ENDPOINT"):
        c.verify([subject("r1", ZHANG)], None)


# -- pseudonyms and redaction ----------------------------------------------------------------
def test_pseudonyms_are_consistent_within_a_request_and_differ_across(tmp_path: Path) -> None:
    write(tmp_path / "logs/a.log", ["a Zhang.Wei@Example.com", "b zhang.wei%40example.com",
                                    "c +86 138-0013-8000", "d 13800138000"])
    write(tmp_path / "logs/b.log", ["a zhang.wei@example.com"])
    zhang = subject("r1", ZHANG)
    c = connector(tmp_path)
    c.erase([zhang], None, keys_for(zhang))
    a = [line.split(" ", 1)[1] for line in read_lines(tmp_path / "logs/a.log")[:4]]
    assert a[0] == a[1] != a[2] == a[3] and all(is_pseudonym(x) for x in a)
    assert read_lines(tmp_path / "logs/b.log")[0] == f"a {a[0]}"

    other = tmp_path / "other"
    write(other / "logs/a.log", ["a Zhang.Wei@Example.com"])
    again = subject("r2", ZHANG)
    connector(other).erase([again], None, keys_for(again))
    assert read_lines(other / "logs/a.log")[0] != f"a {a[0]}"


def test_two_subjects_of_a_batch_on_one_line(tmp_path: Path) -> None:
    write(tmp_path / "logs/a.log", ["zhang.wei@example.com invited wang.fang@example.org",
                                    "wang.fang@example.org"])
    zhang, wang = subject("r1", ZHANG), subject("r2", WANG)
    keys = keys_for(zhang, wang)
    outcomes = connector(tmp_path).erase([zhang, wang], None, keys)
    assert read_lines(tmp_path / "logs/a.log")[:2] == [
        f"{keys['r1']('zhang.wei@example.com')} invited {keys['r2']('wang.fang@example.org')}",
        keys["r2"]("wang.fang@example.org"),
    ]
    assert totals(outcomes, "found") == {"r1": 1, "r2": 2}
    assert totals(outcomes, "anonymized") == {"r1": 1, "r2": 2}


def test_redact_mode_writes_the_marker(tmp_path: Path) -> None:
    write(tmp_path / "logs/a.log", ["login zhang.wei@example.com uid=12 ok"])
    write(tmp_path / "app/a.jsonl", [json.dumps({"user": {"id": 12}})])
    zhang = subject("r1", ZHANG)
    c = connector(tmp_path, {"access": TEXT, "app": JSONL}, action="redact",
                  redact_with="[gone]")
    c.erase([zhang], None, keys_for(zhang))
    assert read_lines(tmp_path / "logs/a.log")[0] == "login [gone] uid=[gone] ok"
    assert json.loads(read_lines(tmp_path / "app/a.jsonl")[0]) == {"user": {"id": "[gone]"}}
    assert totals(c.verify([zhang], None), "remaining") == {"r1": 0}


def test_out_of_scope_touches_nothing(tmp_path: Path) -> None:
    data = write(tmp_path / "logs/a.log", ["uid=12"])
    zhang = subject("r1", ZHANG)
    c = connector(tmp_path)
    assert c.erase([zhang], frozenset({"location"}), keys_for(zhang))["r1"].parts == {}
    assert c.collect([zhang], frozenset({"location"})) == {"r1": {}}
    assert (tmp_path / "logs/a.log").read_bytes() == data


def test_errors_name_the_file_never_a_value(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/bad.log.gz").write_bytes(b"\x1f\x8b" + b"zhang.wei@example.com" * 3)
    zhang = subject("r1", ZHANG)
    with pytest.raises(LogsError) as caught:
        connector(tmp_path).erase([zhang], None, keys_for(zhang))
    message = str(caught.value)
    assert "logs/bad.log.gz" in message and "applogs" in message
    assert "zhang" not in message.lower() and "13800138000" not in message


# -- S3 -------------------------------------------------------------------------------------
@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("s3", region_name="us-east-1")


def test_old_versions_that_s3_refuses_to_delete_fail_the_file_by_error_code_only(
    tmp_path: Path, s3: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old version still holds the subject's line: the erasure must fail, naming the
    file and S3's code, and never repeat what the endpoint put in the code."""
    s3.create_bucket(Bucket="wishe-logs")
    s3.put_bucket_versioning(Bucket="wishe-logs", VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket="wishe-logs", Key="app/d1.log", Body=b"uid=12 zhang.wei@example.com\n")
    real = s3.delete_objects

    def refusing(**kwargs: Any) -> Any:
        real(**kwargs)  # S3 answers per object: some went, these did not
        return {"Errors": [{"Key": "app/d1.log", "Code": "AccessDenied"},
                           {"Key": "app/d1.log", "Code": "denied zhang.wei@example.com"}]}

    monkeypatch.setattr(s3, "delete_objects", refusing)
    source = {"s3": {"bucket": "wishe-logs", "prefix": "app/"}, "format": "text",
              "identities": ["email", "user_id"]}
    zhang = subject("r1", ZHANG)
    with pytest.raises(LogsError) as caught:
        connector(tmp_path, {"access": source}, client=s3).erase([zhang], None, keys_for(zhang))
    message = str(caught.value)
    assert "s3://wishe-logs/app/d1.log: deleting old versions failed" in message
    assert "AccessDenied, unrecognised" in message and "zhang" not in message


@pytest.mark.parametrize("versioned", [True, False])
def test_s3_objects_plain_and_gzip(tmp_path: Path, s3: Any, versioned: bool) -> None:
    s3.create_bucket(Bucket="wishe-logs")
    if versioned:
        s3.put_bucket_versioning(Bucket="wishe-logs",
                                 VersioningConfiguration={"Status": "Enabled"})
    old = "uid=12 zhang.wei@example.com\nuid=123 wang.fang@example.org\n"
    s3.put_object(Bucket="wishe-logs", Key="app/2026-10-31.log", Body=b"uid=12 older version\n")
    s3.put_object(Bucket="wishe-logs", Key="app/2026-10-31.log", Body=old.encode(),
                  ContentType="text/plain", Metadata={"host": "web-1"})
    s3.put_object(Bucket="wishe-logs", Key="app/2026-10-30.log.gz",
                  Body=gzip.compress(b"138 0013 8000\nnobody\n"))
    s3.put_object(Bucket="wishe-logs", Key="app/2026-10-29.log", Body=b"nobody here\n")
    s3.put_object(Bucket="wishe-logs", Key="other/skip.log", Body=b"uid=12\n")
    untouched = s3.head_object(Bucket="wishe-logs", Key="app/2026-10-29.log")["ETag"]
    source = {"s3": {"bucket": "wishe-logs", "prefix": "app/"}, "format": "text",
              "identities": ["email", "phone", "user_id"]}
    c = connector(tmp_path, {"access": source}, client=s3)
    zhang = subject("r1", ZHANG)
    collected = c.collect([zhang], None)["r1"]["access"]
    assert [(r["file"], r["line"]) for r in collected] == [
        ("app/2026-10-30.log.gz", 1), ("app/2026-10-31.log", 1)]

    outcomes = c.erase([zhang], None, keys_for(zhang))

    body = s3.get_object(Bucket="wishe-logs", Key="app/2026-10-31.log")
    lines = body["Body"].read().decode().split("\n")
    assert lines[0].startswith("uid=pn_") and lines[1] == "uid=123 wang.fang@example.org"
    assert body["ContentType"] == "text/plain" and body["Metadata"] == {"host": "web-1"}
    gz = s3.get_object(Bucket="wishe-logs", Key="app/2026-10-30.log.gz")["Body"].read()
    assert gzip.decompress(gz).decode().split("\n")[0].startswith("pn_")
    assert s3.get_object(Bucket="wishe-logs", Key="other/skip.log")["Body"].read() == b"uid=12\n"
    assert s3.head_object(Bucket="wishe-logs", Key="app/2026-10-29.log")["ETag"] == untouched
    if versioned:
        versions = s3.list_object_versions(Bucket="wishe-logs", Prefix="app/")
        per_key: dict[str, int] = {}
        for v in versions.get("Versions", []):
            per_key[v["Key"]] = per_key.get(v["Key"], 0) + 1
        assert per_key == {"app/2026-10-31.log": 1, "app/2026-10-30.log.gz": 1,
                           "app/2026-10-29.log": 1}
        assert not versions.get("DeleteMarkers")
    assert outcomes["r1"].parts["access"].found == 2
    assert totals(c.verify([zhang], None), "remaining") == {"r1": 0}
    assert not list((tmp_path / ".state" / "tmp").iterdir())
    again = c.erase([zhang], None, keys_for(zhang))
    assert totals(again, "found") == {"r1": 0}  # another key: a new batch, nothing left


# -- property: nobody else's line changes, no spelling of a subject survives -----------------
_PHONES = [f"+86{p}{n:08d}" for p in ("138", "139", "150", "186") for n in (13800, 45678, 99)]
_FILLER = ["GET", "ok", "status=200", "/api/v1/items", "-", "[info]", "level=warn", "n=5",
           "2026-11-01T10:00:00Z", "10.0.0.12", "200", "512", "0.012", "v=3", "abc12", "x-y"]
_JOINERS = [" ", " | ", "&", ", ", "; ", "\t"]


def _people(n: int) -> list[dict[str, str]]:
    # ids deliberately prefixes of each other (12, 123, 1234 ...) and short
    ids = ["12", "123", "1234", "21", "2", "u_1", "u_12", "9"]
    return [{"email": f"{['zhang', 'wang', 'li', 'zhao'][i % 4]}.w{i}@example.com",
             "phone": _PHONES[i], "user_id": ids[i]} for i in range(n)]


def _spellings(person: dict[str, str]) -> list[str]:
    email = person["email"]
    n = person["phone"][3:]
    uid = person["user_id"]
    out = [email, email.upper(), email.title(), f"email={quote(email, safe='')}", n,
           f"+86{n}", f"0086{n}", f"{n[:3]} {n[3:7]} {n[7:]}", f"{n[:3]}-{n[3:7]}-{n[7:]}",
           f"+86 {n[:3]}-{n[3:7]}-{n[7:]}", f"phone=%2B86{n}", f"uid={uid}",
           f"user_id: {uid}", f"/users/{uid}/", f'"user_id":"{uid}"']
    if not uid.isdigit():
        out.append(uid)
    return out


def _segment_in(segment: str, line: str) -> bool:
    """`segment` stands in `line` between joiners (or at an end): `uid=12` is not in
    `uid=123`."""
    return re.search(rf"(?:^|(?<=[ |&,;\t])){re.escape(segment)}(?=$|[ |&,;\t])", line) is not None


@st.composite
def _worlds(draw: st.DrawFn) -> tuple[list[dict[str, str]], int, list[list[tuple[int, str]]]]:
    n = draw(st.integers(2, 6))
    people = _people(n)
    erased = draw(st.integers(1, n - 1))
    mentions = [(p, s) for p in range(n) for s in _spellings(people[p])]
    segment = st.one_of(
        st.sampled_from([(-1, f) for f in _FILLER]), st.sampled_from(mentions)
    )
    lines = draw(st.lists(st.lists(segment, min_size=1, max_size=6), min_size=1, max_size=12))
    return people, erased, lines


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(world=_worlds(), seed=st.integers(0, 1000))
def test_property_nobody_else_changes_and_no_spelling_survives(
    tmp_path_factory: pytest.TempPathFactory, world: Any, seed: int,
) -> None:
    people, erased, lines = world
    rng = random.Random(seed)
    base = tmp_path_factory.mktemp("prop")
    texts = []
    for segments in lines:
        text = segments[0][1]
        for _, s in segments[1:]:
            text += rng.choice(_JOINERS) + s
        texts.append(text)
    write(base / "logs/a.log", texts)
    subjects = [subject(f"r{i}", people[i]) for i in range(erased)]
    c = connector(base)
    c.erase(subjects, None, keys_for(*subjects))
    after = read_lines(base / "logs/a.log")[: len(texts)]
    for segments, before, now in zip(lines, texts, after, strict=True):
        mentioned = {p for p, _ in segments if 0 <= p < erased}
        if not mentioned:
            assert now == before
            continue
        for p, spelling in segments:
            if 0 <= p < erased:
                assert not _segment_in(spelling, now)
            elif p >= erased:
                assert _segment_in(spelling, now)  # someone else's mention survives, even here
    assert all(v == 0 for v in totals(c.verify(subjects, None), "remaining").values())


# -- the demo's logs ---------------------------------------------------------------------------
def test_demo_logs_and_their_datamap_fragment(tmp_path: Path) -> None:
    from examples import wishe
    from examples.wishe.generate import build_world
    from examples.wishe.logs import DATAMAP_SYSTEM, OLD_ACCESS_LINES, write_logs
    from examples.wishe.subjects import SUBJECTS

    url = f"sqlite:///{tmp_path / 'wishe.db'}"
    build_world(url, users=60, seed=7)
    counts = write_logs(tmp_path / "logs", url, lines=3000, seed=7)
    assert 2900 < sum(counts.values()) - OLD_ACCESS_LINES <= 3000
    assert counts["nginx/access.log.1"] == OLD_ACCESS_LINES
    assert any(name.endswith(".jsonl.gz") for name in counts)
    again = tmp_path / "again"
    write_logs(again, url, lines=3000, seed=7)
    for name in counts:
        assert (tmp_path / "logs" / name).read_bytes() == (again / name).read_bytes()

    datamap = yaml.safe_load((Path(wishe.__file__).parent / "datamap.yaml").read_text())
    datamap["systems"]["applogs"] = DATAMAP_SYSTEM
    system = parse_datamap(datamap).systems["applogs"]
    assert isinstance(system, LogsSystem)

    demo = SUBJECTS[0]
    zhang = Subject(request_id="r1", phone_region="CN", identities=(
        Identity(type=IdentityType.USER_ID, value=str(demo.user_id)),
        Identity(type=IdentityType.EMAIL, value=demo.email),
        Identity.read(IdentityType.PHONE, demo.phone, "CN"),
    ))
    c = LogsConnector("applogs", system, base_dir=tmp_path, state_dir=tmp_path / "state")
    before = {name: read_lines(tmp_path / "logs" / name) for name in counts}
    found = c.verify([zhang], None)["r1"]
    assert found.parts["app"].remaining > 0 and found.parts["access"].remaining > 0
    c.erase([zhang], None, keys_for(zhang))
    assert totals(c.verify([zhang], None), "remaining") == {"r1": 0}
    changed = 0
    for name, old_lines in before.items():
        for old, new in zip(old_lines, read_lines(tmp_path / "logs" / name), strict=True):
            if old != new:
                changed += 1
                assert (f'"id":{demo.user_id},' in old or f"uid={demo.user_id}&" in old
                        or demo.email_normalized in old.lower()
                        or quote(demo.email, safe="").lower() in old.lower())
    assert changed == found.total("remaining")
