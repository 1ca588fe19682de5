"""Retention sweeps of one log source (privacy policy 3.1: security and access logs are kept
180 days, then their lines are deleted): the lines or whole files of a `LogRetentionRule`
past its cutoff, counted (`expired`, a dry run) or deleted (`sweep`).

What is past the cutoff. `file_modified`: a file whose last write (local mtime, S3
LastModified) is before the cutoff, every line of it. `line_timestamp`: each line by its
own time, expired when strictly before the cutoff. jsonl: the value at the rule's dotted
`timestamp_field` (an ISO 8601 string, with an offset, `Z`, or none = UTC; a date alone
counts as the last instant of that UTC day; or epoch seconds / milliseconds as a JSON
number). text: the first ISO 8601 date-and-time or common-log-format
`[04/Dec/2026:10:00:00 +0800]` in the line, whichever comes first. A line whose time
cannot be read (not JSON, no field, no timestamp, an epoch of 0 or below) is kept and
counted `undated`: a sweep never guesses a line old. Blank lines are nobody's lines:
neither counted nor ever cut, and they do not keep a file alive.

What goes. The expired lines are cut out, each with its own newline; every other line
stays byte for byte, in order (a last line without a newline stays without one). A file
left without a line is deleted; in `file_modified` mode an expired file is deleted whole.
A file that has no line at all is left as it is: nothing of anyone is in it, and it may be
the empty log a writer has just been given by its rotation.
The rewrite is the logs connector's own (`connectors/logs/connector.py`): a new version
beside the file replaced with `os.replace` and the old mode, owner and times, or copied
into the file's inode under a journal when it has hard links (a file deleted whole is
emptied in its inode first, so that no other name keeps its lines); gzip stays gzip; a
plain file that grows while it is read has its new lines read too, and one that changes
afterwards is read again. An S3 object is downloaded into `state_dir`, rewritten there and
put back, and in a versioned bucket every other version and delete marker of its key is
deleted; an object deleted whole loses every version. The system's erasure lock is held
throughout, so a sweep and an erasure never rewrite one file at once; a rewrite that a
crash interrupted is finished, and left-over temporary files removed, before anything is
read. Killed at any point, every file is its old version or its new one; the rerun cuts
what is left and reports only what it changed itself.

Legal holds. `held` None: no hold covers the rule. Otherwise each expired line's
identities (jsonl: the values of the source's `fields`, each with its type, plus the
identities of that type written inside the value, as erasure finds them there) go to
`held`, and a line it claims is kept and counted `held`; a line without identities is no
one's to hold. In `file_modified` mode an expired file is read for its held lines, which
stay. A text source's lines cannot be attributed without the raw identities the ledger
does not keep: a hold over one raises `HoldUnreadable` before anything is read or changed.

Errors name the system, the source, the file and the operation, as the connector's do,
never a line or a value.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote

from connectors.logs.connector import LogsConnector, _code, _unchanged
from connectors.logs.errors import LogsError
from connectors.logs.matching import _STR, _phone_groups
from connectors.logs.prefilter import BLOCK, _blocks
from connectors.logs.rewrite import (
    TMP_SUFFIX,
    _Checkpoint,
    _Counted,
    _File,
    _is_gzip,
    _new_temp,
    _NoTemp,
    _Rewriter,
    _write_gzip,
)
from connectors.logs.times import EPOCH, Number, text_time, utc, value_time
from connectors.s3 import delete_versions, versioned
from dsrflow.datamap import LogRetentionRule, LogSource
from dsrflow.identities import IdentityType

# The identities found in one line (type, raw value as written) -> whether any belongs to a
# subject a legal hold keeps (the caller normalizes and compares keyed tokens).
HeldLine = Callable[[Sequence[tuple[IdentityType, str]]], bool]

ATTEMPTS = 5  # reads of a file that keeps changing under the sweep before it gives up


class HoldUnreadable(LogsError):
    """A legal hold covers a `text` source: its lines cannot be attributed to subjects
    without raw identities, so nothing of it may be deleted. Raised before anything is
    read or changed."""


@dataclass(frozen=True)
class LogsExpired:
    """A dry run: the lines past the cutoff (held ones included, as a SQL dry run counts
    held rows), the files a sweep would delete whole, the expired lines holds keep, the
    lines without a readable time, and the oldest expired time (line or file)."""

    lines: int
    files: int
    held: int
    undated: int
    oldest: datetime | None


@dataclass(frozen=True)
class LogsSwept:
    lines: int  # lines deleted (those of deleted files included)
    files: int  # files deleted whole
    held: int  # expired lines a legal hold kept
    undated: int  # lines kept because their time could not be read
    longest_file_s: float  # the longest any one file took (read, rewrite, replace)


def expired(connector: LogsConnector, rule: LogRetentionRule, cutoff: datetime,
            held: HeldLine | None) -> LogsExpired:
    """Count what `sweep` would delete at `cutoff`, reading every file of the source that
    may hold an expired line. Changes nothing."""
    source = _source(connector, rule, held)
    judge = _Judge(connector, rule, source, utc(cutoff), held)
    tally = _Tally()
    with connector._reading():
        for planned in _plan(connector, rule, source):
            file = planned.file
            modified = _modified(connector, planned)
            if judge.whole and modified >= judge.cutoff:
                continue
            with connector._read(file) as read:
                sort = _Sort(judge)
                _sort_lines(read, sort)
            tally.add(sort, sort.whole_file, modified if judge.whole else None)
    return LogsExpired(lines=tally.cut + tally.held, files=tally.files, held=tally.held,
                       undated=tally.undated, oldest=tally.oldest)


def sweep(connector: LogsConnector, rule: LogRetentionRule, cutoff: datetime,
          held: HeldLine | None) -> LogsSwept:
    """Delete the lines (or files) of `rule` past `cutoff`, leaving those a legal hold
    keeps; one file at a time, each rewritten whole or not at all."""
    source = _source(connector, rule, held)
    judge = _Judge(connector, rule, source, utc(cutoff), held)
    tally = _Tally()
    connector.state_dir.mkdir(parents=True, exist_ok=True)
    with connector._lock():
        # Before anything is read: no sweep may read a file half copied into its inode.
        connector._finish_in_place_copies()
        connector._remove_stale_temps()
        checkpoint = _Checkpoint(connector.state_dir, _batch(connector, rule))
        _finish_purges(connector, checkpoint)
        for planned in _plan(connector, rule, source):
            file = planned.file
            if judge.whole and planned.modified is not None \
                    and planned.modified >= judge.cutoff:
                continue  # an object written since the cutoff: not even downloaded
            started = time.perf_counter()
            if file.bucket is not None:
                done = _sweep_object(connector, file, judge, checkpoint)
            else:
                done = _sweep_local(connector, file, list(planned.names), judge, checkpoint)
            if done is not None:
                sort, deleted = done
                tally.add(sort, deleted, None)
            tally.longest = max(tally.longest, time.perf_counter() - started)
        if not any(e.get("purged") is False for e in checkpoint.entries.values()):
            # Nothing left for a rerun to finish: the record need not outlive the sweep.
            checkpoint.path.unlink(missing_ok=True)
    return LogsSwept(lines=tally.cut, files=tally.files, held=tally.held,
                     undated=tally.undated, longest_file_s=tally.longest)


# -- what one line is ------------------------------------------------------------------------
_KEEP, _BLANK, _UNDATED, _HELD, _CUT = range(5)


class _Judge:
    """Tells each line's fate: kept (not expired), blank, undated, held, or cut."""

    def __init__(self, connector: LogsConnector, rule: LogRetentionRule, source: LogSource,
                 cutoff: datetime, held: HeldLine | None) -> None:
        self.cutoff = cutoff
        self.held = held
        self.whole = rule.counts_from == "file_modified"
        self.jsonl = source.format == "jsonl"
        self.fields = {p: IdentityType(t) for p, t in source.fields.items()}
        self.stamp = rule.timestamp_field
        if not self.whole and self.jsonl and not self.stamp:
            raise LogsError(f"systems.{connector.name}.retention.{rule.name}: a jsonl "
                            "source's line_timestamp rule needs timestamp_field")
        wanted = set(self.fields) | ({self.stamp} if self.stamp else set())
        self.wanted = frozenset(wanted)
        self.prefixes = frozenset(
            p.rsplit(".", i)[0] for p in wanted for i in range(p.count(".") + 1))

    def line(self, raw: bytes) -> tuple[int, datetime | None]:
        if not raw.strip():
            return _BLANK, None
        if self.whole:
            # The file is past the cutoff, so every line of it is.
            if self.held is None:
                return _CUT, None
            return (_HELD if self._held(self._json(raw)) else _CUT), None
        if not self.jsonl:
            when = text_time(raw)
            if when is None:
                return _UNDATED, None
            return (_CUT if when < self.cutoff else _KEEP), when
        found = self._json(raw)
        if found is None:
            return _UNDATED, None
        times = [t for t in (value_time(v) for p, v in found if p == self.stamp)
                 if t is not None]
        if not times:
            return _UNDATED, None
        # Several values at the field (a repeated key, an array): the line is as young as
        # the youngest, so nothing is cut that any of them says must stay.
        when = max(times)
        if when >= self.cutoff:
            return _KEEP, when
        return (_HELD if self._held(found) else _CUT), when

    def _json(self, raw: bytes) -> list[tuple[str, Any]] | None:
        """(path, value) of the wanted scalars of a JSON-object line, or None if it is not
        one. Paths and arrays as the connector's `_LineReader` walks them."""
        if not self.jsonl:
            return None
        try:
            doc = json.loads(raw.decode("utf-8", "surrogateescape"),
                             object_pairs_hook=_Object, parse_int=Number,
                             parse_float=Number, parse_constant=_no_value)
        except (ValueError, RecursionError):
            return None
        if not isinstance(doc, _Object):
            return None
        out: list[tuple[str, Any]] = []
        self._walk(doc, "", out)
        return out

    def _walk(self, node: Any, path: str, out: list[tuple[str, Any]]) -> None:
        if isinstance(node, _Object):
            if path and path not in self.prefixes:
                return
            for key, value in node:
                self._walk(value, f"{path}.{key}" if path else key, out)
        elif isinstance(node, list):
            if path in self.prefixes:
                for item in node:
                    self._walk(item, path, out)
        elif path in self.wanted and isinstance(node, str):  # Number is a str
            out.append((path, node))

    def _held(self, found: list[tuple[str, Any]] | None) -> bool:
        if self.held is None or not found:
            return False
        identities: list[tuple[IdentityType, str]] = []
        for path, value in found:
            kind = self.fields.get(path)
            if kind is not None:
                identities += [(kind, c) for c in _candidates(kind, value)]
        return bool(identities) and self.held(identities)


class _Object(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs: a repeated key keeps every value."""


def _no_value(_text: str) -> None:
    return None  # NaN, Infinity: neither a time nor an identity


def _candidates(kind: IdentityType, raw: str) -> list[str]:
    """The value itself, and the identities of its type written inside it (a message
    field, a URL), as erasure would find them: a held subject mentioned anywhere in a
    declared field keeps the line. More candidates only ever keep more lines."""
    found = [raw]
    if kind is IdentityType.EMAIL:
        for m in _STR.email.finditer(raw):
            found += [m.group(0), f"{unquote(m.group(1))}@{m.group(2)}"]
    elif kind is IdentityType.PHONE:
        for m in _STR.phone.finditer(raw):
            run = m.group(0)
            lead = 1 if run.startswith("+") else 3 if run.startswith("%") else 0
            groups = _phone_groups(run, lead, _STR)[:8]
            for i in range(len(groups)):
                for j in range(i, len(groups)):
                    text = run[0 if i == 0 else groups[i][0]:groups[j][1]]
                    found += [text, unquote(text)]
    elif kind is IdentityType.IP:
        for m in _STR.ipv4.finditer(raw):
            if m.group("arpa") is not None:
                found.append(".".join(reversed(m.group("arpa").split("."))))
            elif m.group("dot") is not None:
                found.append(m.group("dot"))
            else:
                found.append(m.group("dash").replace("-", "."))
        for m in _STR.ipv6.finditer(raw):
            found += [m.group("addr"), unquote(m.group("addr"))]
    else:
        found += [t.strip(".-") for t in _STR.token.findall(raw) if t.strip(".-")]
    return list(dict.fromkeys(found))


# -- the lines of one file -------------------------------------------------------------------
@dataclass
class _Sort:
    """What one read of a file found, and the byte ranges to cut: adjacent expired lines
    make one range (logs are in time order, so a file's expired lines are mostly one run),
    handed to `sink` once a kept line ends it (a plain file's rewriter), or kept in
    `ranges` without one (gzip)."""

    judge: _Judge
    sink: Callable[[int, int], None] | None = None
    cut: int = 0
    held: int = 0
    undated: int = 0
    kept: int = 0  # lines that stay, blank ones aside
    oldest: datetime | None = None
    ranges: list[tuple[int, int]] = field(default_factory=list)
    _pending: tuple[int, int] | None = None

    @property
    def whole_file(self) -> bool:
        return self.cut > 0 and self.kept == 0

    def line(self, offset: int, length: int, raw: bytes) -> None:
        verdict, when = self.judge.line(raw)
        if verdict in (_CUT, _HELD) and when is not None and (
                self.oldest is None or when < self.oldest):
            self.oldest = when
        if verdict == _CUT:
            self.cut += 1
            if self._pending is not None and self._pending[1] == offset:
                self._pending = (self._pending[0], offset + length + 1)
            else:
                self.flush(offset)
                self._pending = (offset, offset + length + 1)
            return
        self.flush(offset)
        if verdict == _HELD:
            self.held += 1
        elif verdict == _UNDATED:
            self.undated += 1
        if verdict != _BLANK:
            self.kept += 1

    def flush(self, size: int) -> None:
        """Hand on the pending range, cut at `size` (a last line without a newline)."""
        if self._pending is None:
            return
        start, end = self._pending[0], min(self._pending[1], size)
        self._pending = None
        if self.sink is not None:
            self.sink(start, end - start)
        else:  # gzip: the new version is written after the read, from these
            self.ranges.append((start, end - start))


def _sort_lines(read: Callable[[int], bytes], sort: _Sort, start: int = 0) -> None:
    for block in _blocks(read, start, line_numbers=False):
        data, last = block.data, block.last
        pos = 1
        while pos <= last:
            newline = data.index(b"\n", pos)
            sort.line(block.base + pos, newline - pos, data[pos:newline])
            pos = newline + 1


@dataclass
class _Cut:
    sort: _Sort
    tmp: str | None  # the new version, if the file is rewritten
    covered: int  # bytes of the old file read (-1: gzip)


def _cut(connector: LogsConnector, file: _File, path: str, directory: str,
         judge: _Judge) -> _Cut | None:
    """Read `path` once; if it has lines to cut and lines to keep, write its new version
    into `directory`. None when a plain file grew in the middle of a line."""
    prefix = f".{os.path.basename(path)}."
    try:
        with open(path, "rb") as raw:
            if _is_gzip(raw.read(2)):
                raw.seek(0)
                sort = _Sort(judge)
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    read = _Counted(stream.read)
                    _sort_lines(read.read, sort)
                sort.flush(read.total)
                if not sort.cut or sort.whole_file:
                    return _Cut(sort, None, -1)
                fd, tmp = _new_temp(directory, prefix)
                try:
                    _write_gzip(path, fd, [(o, n, b"") for o, n in sort.ranges])
                except BaseException:
                    os.close(fd)
                    os.unlink(tmp)
                    raise
                os.close(fd)
                return _Cut(sort, tmp, -1)
            raw.seek(0)
            read = _Counted(raw.read)
            rewriter = _Rewriter(path, directory, prefix)
            sort = _Sort(judge, lambda offset, length: rewriter.change(offset, length, b""))
            try:
                start = 0
                while True:
                    _sort_lines(read.read, sort, start)
                    # Lines appended while we read (an active log) are read too, when the
                    # file is to be rewritten: the new version must hold them.
                    if not sort.cut or os.fstat(raw.fileno()).st_size <= read.total:
                        break
                    if os.pread(raw.fileno(), 1, read.total - 1) != b"\n":
                        rewriter.discard()
                        return None
                    start = read.total
                if not sort.cut or sort.whole_file:
                    rewriter.discard()
                    return _Cut(sort, None, read.total)
                sort.flush(read.total)
                return _Cut(sort, rewriter.finish(read.total), read.total)
            except BaseException:
                rewriter.discard()
                raise
    except _NoTemp as exc:
        raise connector._error(file, f"create a temporary file in {directory}", exc.error) \
            from None
    except (OSError, EOFError, zlib.error) as exc:
        raise connector._error(file, "read", exc) from None


# -- local files -----------------------------------------------------------------------------
def _sweep_local(connector: LogsConnector, file: _File, names: list[str], judge: _Judge,
                 checkpoint: _Checkpoint) -> tuple[_Sort, bool] | None:
    """Cut one local file. Returns what it found and whether the file was deleted whole,
    or None when it is not past the cutoff (`file_modified`)."""
    assert file.path is not None
    for _attempt in range(ATTEMPTS):
        before = connector._stat(file)
        if judge.whole and _from_ns(before.st_mtime_ns) >= judge.cutoff:
            return None  # written since it was listed
        # A file with other names (hard links, some perhaps outside every source) keeps
        # its inode, or those names would keep the old lines.
        in_place = before.st_nlink > 1
        directory = str(connector._pending_dir) if in_place else \
            os.path.dirname(file.path) or "."
        cut = _cut(connector, file, file.path, directory, judge)
        if cut is None:
            continue  # the last line was still being written when we read it
        if not cut.sort.cut:
            return cut.sort, False
        tmp = cut.tmp
        try:
            after = connector._stat(file)
            if not _unchanged(before, after, cut.covered):
                continue  # it changed in a way we cannot follow: start over
            if tmp is None:
                _delete_local(connector, file, names, after, checkpoint)
                return cut.sort, True
            if in_place:
                connector._copy_into_place(file, tmp, after, {}, checkpoint, file.key)
            else:
                connector._move_into_place(file, tmp, after, {}, checkpoint, file.key)
            return cut.sort, False
        finally:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
    raise LogsError(
        f"systems.{connector.name}.sources.{file.source}: {file.name} kept changing while "
        "it was swept; run again"
    )


def _delete_local(connector: LogsConnector, file: _File, names: list[str],
                  st: os.stat_result, checkpoint: _Checkpoint) -> None:
    """Delete a file every line of which goes: emptied in its inode first if it has other
    names (which then hold nothing), then every name of it that the source reaches."""
    assert file.path is not None
    if st.st_nlink > 1:
        try:
            fd, empty = _new_temp(str(connector._pending_dir), f".{os.path.basename(file.path)}.")
        except _NoTemp as exc:
            raise connector._error(file, "create a temporary file", exc.error) from None
        os.close(fd)
        try:
            connector._copy_into_place(file, empty, st, {}, checkpoint, file.key)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(empty)
    for path in names:
        try:
            now = os.stat(path)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                continue  # replaced by another file since it was read: not ours to delete
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise connector._error(file, "delete", exc) from None


# -- S3 objects ------------------------------------------------------------------------------
def _sweep_object(connector: LogsConnector, file: _File, judge: _Judge,
                  checkpoint: _Checkpoint) -> tuple[_Sort, bool] | None:
    assert file.bucket is not None
    client = connector.client
    work = connector.state_dir / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    for _attempt in range(ATTEMPTS):
        fd, local = tempfile.mkstemp(dir=work, prefix=".object.", suffix=TMP_SUFFIX)
        os.close(fd)
        cut: _Cut | None = None
        try:
            try:
                got = client.get_object(Bucket=file.bucket, Key=file.name)
                if judge.whole and got["LastModified"] >= judge.cutoff:
                    got["Body"].close()
                    return None  # written since it was listed
                with open(local, "wb") as out:
                    shutil.copyfileobj(got["Body"], out, BLOCK)
            except Exception as exc:
                raise connector._error(file, "download", exc) from None
            cut = _cut(connector, file, local, str(work), judge)
            assert cut is not None  # a downloaded copy does not grow
            if not cut.sort.cut:
                return cut.sort, False
            try:
                head = client.head_object(Bucket=file.bucket, Key=file.name)
            except Exception as exc:
                raise connector._error(file, "head", exc) from None
            if head.get("ETag") != got.get("ETag"):
                continue  # a writer replaced it meanwhile: read the new one
            version = got.get("VersionId")
            if cut.tmp is None:
                _delete_object(connector, file, version)
                return cut.sort, True
            _put_back(connector, file, cut.tmp, head, checkpoint)
            return cut.sort, False
        finally:
            for path in (local, cut.tmp if cut is not None else None):
                if path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
    raise LogsError(
        f"systems.{connector.name}.sources.{file.source}: s3://{file.bucket}/{file.name} "
        "kept changing while it was swept; run again"
    )


def _put_back(connector: LogsConnector, file: _File, rewritten: str, head: dict[str, Any],
              checkpoint: _Checkpoint) -> None:
    """Put the new version under the key, then delete every other version: recorded
    before the put, so that a rerun after a crash deletes the old versions even though
    the object it finds has nothing left to cut."""
    assert file.bucket is not None
    record = {"source": file.source, "bucket": file.bucket, "name": file.name}
    checkpoint.put(file.key, {**record, "purged": False})
    extra = {k: head[k] for k in ("ContentType", "ContentEncoding", "ContentDisposition",
                                  "ContentLanguage", "CacheControl", "Metadata")
             if head.get(k)}
    try:
        with open(rewritten, "rb") as f:
            put = connector.client.put_object(Bucket=file.bucket, Key=file.name, Body=f,
                                              **extra)
    except Exception as exc:
        raise connector._error(file, "put", exc) from None
    connector._purge_versions(file, put.get("VersionId"))
    checkpoint.put(file.key, {**record, "purged": True})


def _delete_object(connector: LogsConnector, file: _File, version: str | None) -> None:
    """Delete the object and, in a versioned bucket, every version and delete marker of its
    key: the version read last, so that a crash part-way leaves it to the rerun."""
    assert file.bucket is not None
    client = connector.client
    try:
        keeps_versions = versioned(client, file.bucket)
    except Exception as exc:
        raise connector._error(file, "delete", exc) from None
    if keeps_versions and version is not None:
        connector._purge_versions(file, version)
        try:
            errors = delete_versions(client, file.bucket,
                                     [{"Key": file.name, "VersionId": version}])
        except Exception as exc:
            raise connector._error(file, "delete", exc) from None
        if errors:
            raise LogsError(
                f"systems.{connector.name}.sources.{file.source}: s3://{file.bucket}/"
                f"{file.name}: deleting failed ({', '.join(sorted(errors))})"
            )
        return
    if keeps_versions:
        connector._purge_versions(file, None)
        return
    try:
        client.delete_object(Bucket=file.bucket, Key=file.name)
    except Exception as exc:
        raise connector._error(file, "delete", exc) from None


def _finish_purges(connector: LogsConnector, checkpoint: _Checkpoint) -> None:
    """Old versions a killed sweep put a new version over but did not delete: every
    version of the key but the current one goes (all of them if the key has none)."""
    for key, entry in list(checkpoint.entries.items()):
        if entry.get("purged") is not False:
            continue
        file = _File(str(entry["source"]), str(entry["name"]), bucket=str(entry["bucket"]))
        try:
            current = connector.client.head_object(Bucket=file.bucket, Key=file.name)
            keep = current.get("VersionId")
        except Exception as exc:
            if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise connector._error(file, "head", exc) from None
            keep = None
        connector._purge_versions(file, keep)
        checkpoint.put(key, {**entry, "purged": True})


# -- planning and reading --------------------------------------------------------------------
def _source(connector: LogsConnector, rule: LogRetentionRule,
            held: HeldLine | None) -> LogSource:
    source = connector.system.sources.get(rule.source)
    if source is None:
        raise LogsError(f"systems.{connector.name}.retention.{rule.name}: no source "
                        f"{rule.source!r} in this system")
    if held is not None and source.format == "text":
        raise HoldUnreadable(
            f"systems.{connector.name}.retention.{rule.name}: a legal hold covers source "
            f"{rule.source}, whose text lines cannot be told apart by subject; nothing "
            "was deleted (narrow the hold, or wait for it to be released)"
        )
    return source


@dataclass(frozen=True)
class _Planned:
    file: _File
    names: tuple[str, ...] = ()  # local: every real path of the file the source reaches
    modified: datetime | None = None  # S3: LastModified, from the listing


def _plan(connector: LogsConnector, rule: LogRetentionRule,
          source: LogSource) -> list[_Planned]:
    """The files of the source, each real file once (under its first name), with every
    real path of it the source reaches (hard links: each is deleted with the file). All
    listed before any is changed: a rewrite gives a file a new inode, which must not make
    it look new."""
    if source.path is None:
        return _objects(connector, rule.source, source)
    plan: dict[tuple[int, int], tuple[_File, list[str]]] = {}
    for file in connector._files(rule.source, source):
        assert file.path is not None
        _first, names = plan.setdefault(file.inode, (file, []))
        if file.path not in names:
            names.append(file.path)
    return [_Planned(file, tuple(names)) for file, names in plan.values()]


def _objects(connector: LogsConnector, source_name: str, source: LogSource
             ) -> list[_Planned]:
    """The connector's listing of an S3 source, with each object's last write (which its
    `_File` does not keep)."""
    assert source.s3 is not None
    client = connector.client  # a configuration error is reported as such, not as S3's
    found = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=source.s3.bucket, Prefix=source.s3.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue
                file = _File(source_name, obj["Key"], bucket=source.s3.bucket,
                             etag=obj.get("ETag"), size=int(obj.get("Size", 0)))
                found.append(_Planned(file, modified=utc(obj["LastModified"])))
    except Exception as exc:
        raise LogsError(
            f"systems.{connector.name}.sources.{source_name}: listing s3://"
            f"{source.s3.bucket}/{source.s3.prefix} failed ({_code(exc)})"
        ) from None
    return sorted(found, key=lambda p: p.file.name)


def _modified(connector: LogsConnector, planned: _Planned) -> datetime:
    if planned.modified is not None:
        return planned.modified
    return _from_ns(connector._stat(planned.file).st_mtime_ns)


def _from_ns(ns: int) -> datetime:
    return EPOCH + timedelta(microseconds=ns // 1000)


@dataclass
class _Tally:
    cut: int = 0
    files: int = 0
    held: int = 0
    undated: int = 0
    oldest: datetime | None = None
    longest: float = 0.0

    def add(self, sort: _Sort, deleted: bool, modified: datetime | None) -> None:
        self.cut += sort.cut
        self.held += sort.held
        self.undated += sort.undated
        self.files += int(deleted)
        when = modified if modified is not None and (sort.cut or sort.held) else sort.oldest
        if when is not None and (self.oldest is None or when < self.oldest):
            self.oldest = when


def _batch(connector: LogsConnector, rule: LogRetentionRule) -> str:
    """The checkpoint of a rule's sweeps (named apart from every erasure batch)."""
    digest = hashlib.sha256(f"{connector.name}\x00{rule.name}\x00{rule.source}".encode())
    return f"retention-{digest.hexdigest()[:24]}"
