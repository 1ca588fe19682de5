"""Log files that are links: the real file behind a symbolic link (or a chain of them) is
erased once however many names reach it, and the link stays a link; a file with hard links
keeps its inode, so every name sees the new version; collect and verify read the same real
files, each once; a file that cannot be rewritten fails the step. Real files and links in
tmp_path; where a failure needs the kernel to refuse, `chattr +i` (root ignores permission
bits, not the immutable flag)."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.logs import LogsConnector, LogsError
from connectors.logs import connector as logs_connector
from connectors.logs import rewrite as logs_rewrite
from dsrflow.datamap import LogsSystem
from dsrflow.identities import Identity, IdentityType, Subject
from tests.logfiles import keys_for, write

ZHANG = {"email": "zhang.wei@example.com", "user_id": "12"}
WANG = {"email": "wang.fang@example.org", "user_id": "123"}
LI = {"email": "li.na@example.com", "user_id": "u_77"}
TEXT = {"path": "logs/*.log*", "format": "text", "identities": ["email", "user_id"]}


def subject(rid: str, person: dict[str, str]) -> Subject:
    return Subject(
        request_id=rid,
        identities=tuple(Identity(type=IdentityType(t), value=v) for t, v in person.items()),
    )


def connector(base: Path, sources: dict[str, Any] | None = None) -> LogsConnector:
    spec = LogsSystem.model_validate({"kind": "logs", "sources": sources or {"access": TEXT}})
    return LogsConnector("applogs", spec, base_dir=base, state_dir=base / ".state")


def content(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def link(name: Path, target: str | Path) -> Path:
    name.parent.mkdir(parents=True, exist_ok=True)
    name.symlink_to(target)
    return name


def totals(outcomes: dict[str, Any], attribute: str) -> dict[str, int]:
    return {rid: o.total(attribute) for rid, o in outcomes.items()}


def temporaries(*directories: Path) -> list[Path]:
    return [p for d in directories if d.exists() for p in d.iterdir()
            if p.name.endswith((logs_rewrite.TMP_SUFFIX, logs_rewrite.PENDING_SUFFIX, ".json"))]


# -- symbolic links ---------------------------------------------------------------------------
def _docker_line(text: str, n: int) -> str:
    return f'{{"log":"{text}\\n","stream":"stdout","time":"2026-11-01T10:00:{n:02d}.0Z"}}'


def test_container_layout_erases_the_files_behind_the_links_and_keeps_the_links(
    tmp_path: Path,
) -> None:
    # /var/log/containers/*.log -> /var/log/pods/.../0.log -> /var/lib/docker/containers/...
    abc = tmp_path / "docker/containers/abc/abc-json.log"
    def_ = tmp_path / "docker/containers/def/def-json.log"
    lines_abc = [_docker_line("GET /a?uid=12 by zhang.wei@example.com", 1),
                 _docker_line("GET /a?uid=123 by wang.fang@example.org", 2),
                 _docker_line("healthcheck ok", 3),
                 _docker_line("mail to zhang.wei@example.com queued", 4)]
    lines_def = [_docker_line("login wang.fang@example.org", 5),
                 _docker_line("login zhang.wei@example.com", 6)]
    write(abc, lines_abc)
    write(def_, lines_def)
    pod = link(tmp_path / "pods/default_web-1_0a1b/app/0.log", abc)  # absolute, as kubelet
    links = {
        link(tmp_path / "containers/web-1_default_app-abc.log",
             "../pods/default_web-1_0a1b/app/0.log"): "../pods/default_web-1_0a1b/app/0.log",
        link(tmp_path / "containers/web-2_default_app-def.log",
             "../docker/containers/def/def-json.log"): "../docker/containers/def/def-json.log",
        link(tmp_path / "containers/gone_default_app-zzz.log",
             tmp_path / "docker/containers/zzz/zzz-json.log"):
            str(tmp_path / "docker/containers/zzz/zzz-json.log"),
        pod: str(abc),
    }
    source = {"path": "containers/*.log", "format": "jsonl", "fields": {"log": "email"}}
    c = connector(tmp_path, {"containers": source})
    zhang, wang = subject("r1", ZHANG), subject("r2", WANG)
    assert totals(c.verify([zhang], None), "remaining") == {"r1": 3}

    outcomes = c.erase([zhang], None, keys_for(zhang))

    assert totals(c.verify([zhang], None), "remaining") == {"r1": 0}
    # ... and the data itself says so: replacing the links used to leave every line here
    # while verify, reading the names, said nothing was left.
    assert b"zhang.wei@example.com" not in abc.read_bytes()
    assert b"zhang.wei@example.com" not in def_.read_bytes()
    for name, target in links.items():
        assert name.is_symlink() and os.readlink(name) == target
    new_abc = abc.read_bytes().decode().splitlines()
    assert new_abc[1:3] == lines_abc[1:3] and "pn_" in new_abc[0] and "pn_" in new_abc[3]
    assert def_.read_bytes().decode().splitlines()[0] == lines_def[0]
    assert totals(outcomes, "found") == {"r1": 3}
    assert totals(outcomes, "anonymized") == {"r1": 3}
    assert totals(c.verify([wang], None), "remaining") == {"r2": 2}
    assert not temporaries(abc.parent, def_.parent, tmp_path / "containers")


def test_two_sources_and_several_links_reaching_one_file_read_and_rewrite_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = tmp_path / "app/app.log"
    lines = ["uid=12 a", "uid=123 b", "zhang.wei@example.com c", "nobody", "uid=12 d"]
    write(real, lines)
    link(tmp_path / "current/app.log", "../app/app.log")
    link(tmp_path / "current/latest.log", "app.log")  # a chain: latest -> app -> ../app
    sources = {"current": {**TEXT, "path": "current/*.log"},
               "archive": {**TEXT, "path": "app/*.log"}}
    c = connector(tmp_path, sources)
    zhang = subject("r1", ZHANG)
    replaced: list[str] = []
    real_replace = logs_connector._replace_file

    def counting(tmp: str, path: str) -> None:
        replaced.append(path)
        real_replace(tmp, path)

    monkeypatch.setattr(logs_connector, "_replace_file", counting)

    collected = c.collect([zhang], None)["r1"]
    assert verify_parts(c, zhang) == {"current": 3, "archive": 0}
    outcomes = c.erase([zhang], None, keys_for(zhang))

    # Each line once, under the first source (data-map order) and the first name.
    assert collected == {"current": [
        {"file": "current/app.log", "line": n, "text": lines[n - 1]} for n in (1, 3, 5)]}
    assert replaced == [os.path.realpath(real)]
    assert {n: (p.found, p.anonymized) for n, p in outcomes["r1"].parts.items()} == {
        "current": (3, 3), "archive": (0, 0)}
    assert (tmp_path / "current/latest.log").is_symlink()
    assert (tmp_path / "current/app.log").is_symlink()
    assert real.read_text().splitlines()[1::2] == ["uid=123 b", "nobody"]
    assert verify_parts(c, zhang) == {"current": 0, "archive": 0}


def test_sources_that_read_one_file_differently_each_erase_what_they_look_for(
    tmp_path: Path,
) -> None:
    # One source looks for emails, another (through a link) for user ids: neither may
    # leave what the other would have found, and verification looks for both.
    real = tmp_path / "app/app.log"
    write(real, ["uid=12 logged in", "zhang.wei@example.com invited", "uid=123 left"])
    link(tmp_path / "current/app.log", "../app/app.log")
    sources = {"emails": {"path": "app/*.log", "format": "text", "identities": ["email"]},
               "ids": {"path": "current/*.log", "format": "text", "identities": ["user_id"]}}
    c = connector(tmp_path, sources)
    zhang = subject("r1", ZHANG)
    assert verify_parts(c, zhang) == {"emails": 1, "ids": 1}
    outcomes = c.erase([zhang], None, keys_for(zhang))["r1"]
    assert {n: p.anonymized for n, p in outcomes.parts.items()} == {"emails": 1, "ids": 1}
    text = real.read_text()
    assert "zhang.wei" not in text and "uid=12 " not in text and "uid=123 left" in text
    assert (tmp_path / "current/app.log").is_symlink()
    assert verify_parts(c, zhang) == {"emails": 0, "ids": 0}


def verify_parts(c: LogsConnector, person: Subject) -> dict[str, int]:
    outcome = c.verify([person], None)[person.request_id]
    return {name: part.remaining for name, part in outcome.parts.items()}


def test_a_gzip_file_behind_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "archive/old.log.gz"
    lines = ["a zhang.wei@example.com", "b wang.fang@example.org", "c uid=12"]
    write(target, lines, gz=True)
    link(tmp_path / "logs/old.log.gz", "../archive/old.log.gz")
    zhang = subject("r1", ZHANG)
    c = connector(tmp_path)
    assert [r["file"] for r in c.collect([zhang], None)["r1"]["access"]] == [
        "logs/old.log.gz", "logs/old.log.gz"]

    outcomes = c.erase([zhang], None, keys_for(zhang))

    assert os.readlink(tmp_path / "logs/old.log.gz") == "../archive/old.log.gz"
    raw = target.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    new = gzip.decompress(raw).decode().splitlines()
    assert new[0].startswith("a pn_") and new[2].startswith("c uid=pn_")
    assert new[1] == lines[1]
    assert totals(outcomes, "found") == {"r1": 2}
    assert totals(c.verify([zhang], None), "remaining") == {"r1": 0}


def test_stale_temporaries_beside_a_link_target_are_removed_and_nothing_else(
    tmp_path: Path,
) -> None:
    target = tmp_path / "var/app.log"
    write(target, ["uid=123 only"])
    link(tmp_path / "logs/app.log", target)
    stale = tmp_path / f"var/.app.log.x1y2{logs_rewrite.TMP_SUFFIX}"
    stale.write_text("uid=12 half a copy")
    others = [tmp_path / "var/.keep", tmp_path / f"var/notes{logs_rewrite.TMP_SUFFIX}"]
    for other in others:
        other.write_text("not ours")
    zhang = subject("r1", ZHANG)
    connector(tmp_path).erase([zhang], None, keys_for(zhang))
    assert not stale.exists()
    assert all(other.read_text() == "not ours" for other in others)


# -- hard links -------------------------------------------------------------------------------
def test_a_hard_link_outside_every_source_sees_the_new_version(tmp_path: Path) -> None:
    path = tmp_path / "logs/app.log"
    lines = ["uid=12 in", "uid=123 other", "zhang.wei@example.com out"]
    write(path, lines)
    outside = tmp_path / "backup/app.log"
    outside.parent.mkdir()
    os.link(path, outside)
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    inode = os.stat(path).st_ino
    zhang = subject("r1", ZHANG)
    key = keys_for(zhang)
    c = connector(tmp_path)

    first = c.erase([zhang], None, key)

    new = path.read_bytes()
    assert outside.read_bytes() == new and b"zhang" not in new and b"uid=12 " not in new
    assert new.decode().splitlines()[1] == "uid=123 other"
    st_path, st_outside = os.stat(path), os.stat(outside)
    assert st_path.st_ino == st_outside.st_ino == inode and st_path.st_nlink == 2
    assert st_path.st_mode & 0o777 == 0o640
    assert st_path.st_mtime_ns == 1_700_000_000_000_000_000
    assert totals(first, "found") == {"r1": 2}
    assert totals(c.verify([zhang], None), "remaining") == {"r1": 0}
    assert not temporaries(tmp_path / "logs", tmp_path / ".state/in-place")
    # rerun: the checkpoint skips the file, nothing more is changed or counted; a fresh
    # look finds nothing, rewrites nothing
    again = c.erase([zhang], None, key)
    assert totals(again, "found") == totals(again, "anonymized") == {"r1": 0}
    fresh = LogsConnector("applogs", c.system, tmp_path, tmp_path / ".other-state")
    assert totals(fresh.erase([zhang], None, key), "found") == {"r1": 0}
    assert os.stat(path).st_ctime_ns == st_path.st_ctime_ns  # not written again


def _hard_linked_world(base: Path) -> None:
    write(base / "logs/a.log", [f"{i} uid={12 if i % 3 == 0 else 123}" for i in range(300)])
    (base / "keep").mkdir(parents=True)
    os.link(base / "logs/a.log", base / "keep/a.log")
    write(base / "logs/b.log.gz", ["zhang.wei@example.com", "wang.fang@example.org"], gz=True)
    os.link(base / "logs/b.log.gz", base / "keep/b.log.gz")
    write(base / "logs/c.log", ["uid=12 plain file", "uid=123"])


@pytest.mark.parametrize("when", ["before the copy", "half way through the copy"])
@pytest.mark.parametrize("rerun", ["same batch", "another batch first", "a verify first"])
def test_a_crash_during_an_in_place_rewrite_is_finished_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str, rerun: str,
) -> None:
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    _hard_linked_world(clean)
    _hard_linked_world(crashed)
    zhang = subject("r1", ZHANG)
    key = keys_for(zhang)
    expected = connector(clean).erase([zhang], None, key)
    before = (crashed / "logs/a.log").read_bytes()

    real_copy = logs_connector._copy_in_place

    def crash(src: str, fd: int, times: tuple[int, int]) -> os.stat_result:
        if when.startswith("half"):
            data = Path(src).read_bytes()
            os.pwrite(fd, data[: len(data) // 2], 0)
        raise OSError(5, "simulated crash")

    monkeypatch.setattr(logs_connector, "_copy_in_place", crash)
    with pytest.raises(LogsError, match=r"logs/a\.log: rewrite in place failed .*next erase"):
        connector(crashed).erase([zhang], None, key)
    monkeypatch.setattr(logs_connector, "_copy_in_place", real_copy)
    if when.startswith("before"):
        assert (crashed / "logs/a.log").read_bytes() == before
    journals = (crashed / ".state/in-place").glob(f".*{logs_rewrite.PENDING_SUFFIX}.json")
    assert len(list(journals)) == 1

    if rerun == "another batch first":
        # Whoever erases next finishes the copy before reading anything (here someone
        # with no line anywhere, so that the file is not changed again).
        nobody = subject("r3", LI)
        assert totals(connector(crashed).erase([nobody], None, keys_for(nobody)),
                      "found") == {"r3": 0}
        assert (crashed / "keep/a.log").read_bytes() == (clean / "keep/a.log").read_bytes()
    if rerun == "a verify first":
        # A verification (or an access package) does not read the half-copied file either.
        left = connector(crashed).verify([zhang], None)["r1"].parts["access"].remaining
        assert left == 2  # b.log.gz and c.log: the crash came before them
        assert (crashed / "keep/a.log").read_bytes() == (clean / "keep/a.log").read_bytes()
    resumed = connector(crashed).erase([zhang], None, key)

    for name in ("logs/a.log", "keep/a.log", "logs/b.log.gz", "keep/b.log.gz", "logs/c.log"):
        assert (crashed / name).read_bytes() == (clean / name).read_bytes()
    assert {r: o.details() for r, o in resumed.items()} == {
        r: o.details() for r, o in expected.items()}
    assert os.stat(crashed / "logs/a.log").st_ino == os.stat(crashed / "keep/a.log").st_ino
    assert not temporaries(crashed / "logs", crashed / ".state/in-place")
    assert totals(connector(crashed).verify([zhang], None), "remaining") == {"r1": 0}


# -- files that cannot be rewritten -----------------------------------------------------------
@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`chattr +i`: refused even to root (permission bits are not). Skipped where the file
    system or the capabilities do not allow it."""
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run([chattr, "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("this file system or process cannot set the immutable flag")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], capture_output=True, check=True)


def _assert_refused(c: LogsConnector, zhang: Subject, name: str) -> None:
    with pytest.raises(LogsError) as caught:
        c.erase([zhang], None, keys_for(zhang))
    message = str(caught.value)
    assert "applogs" in message and name in message
    assert "zhang" not in message and "uid=12" not in message


def test_a_link_target_in_a_directory_that_cannot_be_written_fails_the_step(
    tmp_path: Path,
) -> None:
    target = tmp_path / "locked/app.log"
    data = write(target, ["uid=12 x", "uid=123 y"])
    link(tmp_path / "logs/app.log", target)
    zhang = subject("r1", ZHANG)
    c = connector(tmp_path)
    with immutable(target.parent):
        _assert_refused(c, zhang, "logs/app.log")
        assert target.read_bytes() == data
        assert (tmp_path / "logs/app.log").is_symlink()
        assert totals(c.verify([zhang], None), "remaining") == {"r1": 1}


def test_an_immutable_file_with_hard_links_fails_the_step(tmp_path: Path) -> None:
    path = tmp_path / "logs/app.log"
    data = write(path, ["uid=12 x", "uid=123 y"])
    (tmp_path / "keep").mkdir()
    os.link(path, tmp_path / "keep/app.log")
    zhang = subject("r1", ZHANG)
    c = connector(tmp_path)
    with immutable(path):
        _assert_refused(c, zhang, "logs/app.log")
        assert path.read_bytes() == data
    assert not temporaries(tmp_path / ".state/in-place")
    # nothing was left pending: once it can be written, an erase goes through
    assert totals(c.erase([zhang], None, keys_for(zhang)), "found") == {"r1": 1}


def test_a_replace_the_system_refuses_fails_the_step_and_a_rerun_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Where chattr is not available: the refusal the kernel gives a non-root writer.
    target = tmp_path / "var/app.log"
    data = write(target, ["uid=12 x", "uid=123 y"])
    link(tmp_path / "logs/app.log", target)
    zhang = subject("r1", ZHANG)
    key = keys_for(zhang)
    real_replace = logs_connector._replace_file

    def refused(tmp: str, path: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(logs_connector, "_replace_file", refused)
    c = connector(tmp_path)
    _assert_refused(c, zhang, "logs/app.log")
    assert target.read_bytes() == data and not temporaries(target.parent)
    monkeypatch.setattr(logs_connector, "_replace_file", real_replace)
    assert totals(c.erase([zhang], None, key), "found") == {"r1": 1}
    assert b"uid=12 " not in target.read_bytes()


def test_a_target_that_vanishes_mid_way_fails_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmp_path / "var/app.log"
    write(target, ["uid=12 x", "uid=123 y"])
    link(tmp_path / "logs/app.log", target)
    real_scan = logs_connector._scan

    def scan_then_vanish(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from real_scan(*args, **kwargs)
        target.unlink(missing_ok=True)

    monkeypatch.setattr(logs_connector, "_scan", scan_then_vanish)
    _assert_refused(connector(tmp_path), subject("r1", ZHANG), "logs/app.log")
    assert not temporaries(target.parent)


def test_a_dangling_link_is_not_data(tmp_path: Path) -> None:
    link(tmp_path / "logs/gone.log", tmp_path / "var/rotated-away.log")
    write(tmp_path / "logs/app.log", ["uid=123 y"])
    zhang = subject("r1", ZHANG)
    c = connector(tmp_path)
    assert c.collect([zhang], None) == {"r1": {}}
    outcomes = c.erase([zhang], None, keys_for(zhang))
    assert totals(outcomes, "found") == {"r1": 0}
    assert (tmp_path / "logs/gone.log").is_symlink()


# -- property: any topology of files, links and hard links ------------------------------------
_EMAILS = ["p0.zhang@example.com", "p1.wang@example.org", "p2.li@example.net",
           "p3.zhao@example.com"]
_IDS = ["usr_a0", "usr_b1", "usr_c2", "usr_d3"]
_NAME_KINDS = ["link", "chain", "link outside", "hard", "hard outside"]


@dataclass
class _RealFile:
    gz: bool
    inside: bool  # the file itself is in the glob's directory
    lines: list[list[tuple[int, bool]]]  # per line: (person, spelled as email?)
    names: list[tuple[str, bool]]  # kind, absolute link target?


_real_files = st.builds(
    _RealFile,
    gz=st.booleans(),
    inside=st.booleans(),
    lines=st.lists(st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=2),
                   min_size=1, max_size=6),
    names=st.lists(st.tuples(st.sampled_from(_NAME_KINDS), st.booleans()), max_size=3),
)


def _line(n: int, mentions: list[tuple[int, bool]], people: int) -> str:
    said = [(_EMAILS if email else _IDS)[p % people] for p, email in mentions]
    return " ".join([f"{n} event", *said, "status=200"])


def _build(base: Path, files: list[_RealFile], people: int) -> tuple[
        list[tuple[Path, list[str], set[int]]], dict[Path, str], list[list[Path]]]:
    """The world: each real file with its lines (and who each mentions), every symbolic
    link with its target, every set of hard-linked names."""
    reals, links, hard = [], {}, []
    for i, spec in enumerate(files):
        primary = base / ("logs" if spec.inside else "real") / f"f{i}.log"
        lines = [_line(n, m, people) for n, m in enumerate(spec.lines)]
        write(primary, lines, gz=spec.gz)
        names = list(spec.names)
        if not spec.inside and not any(k in ("link", "chain", "hard") for k, _ in names):
            names.append(("link", False))  # every real file is reached by the glob
        group = [primary]
        for k, (kind, absolute) in enumerate(names):
            target = str(primary) if absolute else os.path.relpath(primary, base / "logs")
            if kind == "link":
                links[link(base / f"logs/s{i}_{k}.log", target)] = target
            elif kind == "link outside":
                out = os.path.relpath(primary, base / "out") if not absolute else target
                links[link(base / f"out/s{i}_{k}.log", out)] = out
            elif kind == "chain":
                middle = link(base / f"out/c{i}_{k}.log", primary)
                links[middle] = str(primary)
                links[link(base / f"logs/s{i}_{k}.log", "../out/" + middle.name)] = (
                    "../out/" + middle.name)
            else:
                name = base / ("logs" if kind == "hard" else "out") / f"h{i}_{k}.log"
                name.parent.mkdir(parents=True, exist_ok=True)
                os.link(primary, name)
                group.append(name)
        hard.append(group)
        reals.append((primary, lines, {p % people for m in spec.lines for p, _ in m}))
    link(base / "logs/dangling.log", base / "real/never.log")
    return reals, links, hard


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(files=st.lists(_real_files, min_size=1, max_size=3), people=st.integers(2, 4),
       data=st.data())
def test_property_every_real_file_is_erased_once_and_every_link_kept(
    tmp_path_factory: pytest.TempPathFactory, files: list[_RealFile], people: int,
    data: st.DataObject,
) -> None:
    base = tmp_path_factory.mktemp("links")
    reals, links, hard = _build(base, files, people)
    erased = sorted(data.draw(st.sets(st.integers(0, people - 1), min_size=1)))
    subjects = [subject(f"r{p}", {"email": _EMAILS[p], "user_id": _IDS[p]}) for p in erased]
    c = connector(base, {"access": {**TEXT, "path": "logs/*.log"}})
    oracle = {f"r{p}": 0 for p in erased}
    for spec in files:
        for mentions in spec.lines:
            for p in {p % people for p, _ in mentions} & set(erased):
                oracle[f"r{p}"] += 1
    inodes = {tuple(g): os.stat(g[0]).st_ino for g in hard if len(g) > 1}
    collected = c.collect(subjects, None)
    assert {rid: sum(len(v) for v in r.values()) for rid, r in collected.items()} == oracle

    outcomes = c.erase(subjects, None, keys_for(*subjects))

    assert totals(outcomes, "found") == oracle and totals(outcomes, "anonymized") == oracle
    for (primary, lines, _), spec in zip(reals, files, strict=True):
        raw = primary.read_bytes()
        assert (raw[:2] == b"\x1f\x8b") == spec.gz
        after = content(primary).decode().splitlines()
        for before, now, mentions in zip(lines, after, spec.lines, strict=True):
            who = {p % people for p, _ in mentions}
            if not who & set(erased):
                assert now == before  # byte-identical
            for p in who:
                kept = p not in erased
                assert (_EMAILS[p] in now or _IDS[p] in now) == kept
    for name, target in links.items():
        assert name.is_symlink() and os.readlink(name) == target
    for group in hard:
        assert len({os.stat(n).st_ino for n in group}) == 1
        assert len({n.read_bytes() for n in group}) == 1
        if len(group) > 1:
            assert os.stat(group[0]).st_ino == inodes[tuple(group)]  # rewritten in place
    assert all(v == 0 for v in totals(c.verify(subjects, None), "remaining").values())
    assert not temporaries(base / "logs", base / "real", base / ".state/in-place")
