"""Rewriting a file: streams in and out (plain or gzip), temporary files replaced into place,
in-place copies for files with hard links, and the per-batch checkpoints that make a
rewrite resumable and its counts reported once."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from connectors.logs.errors import LogsError
from connectors.logs.prefilter import BLOCK

TMP_SUFFIX = ".dsrflow-tmp"
PENDING_SUFFIX = ".dsrflow-pending"  # the new version of a file being rewritten in place
GZIP_LEVEL = 6
_GZIP_MAGIC = b"\x1f\x8b"





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

    def __init__(self, state_dir: Path, batch: str, counted: Collection[str] = ()) -> None:
        self.batch = batch
        self.path = state_dir / f"erase-{batch}.jsonl"
        self.entries: dict[str, dict[str, Any]] = {}
        self.counted = frozenset(counted)
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

    def token(self, key: str) -> str:
        """Names this batch's rewrite of the file, for the report of its counts: whoever
        counts the report keeps the token (the ledger does), and a rerun that finds the
        file untold asks that, not this file, whether the report arrived. A crash between
        the report and `tell` leaves the file untold but counted."""
        look = self.entries[key].get("look")
        raw = json.dumps([self.batch, key, look], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def reported(self, key: str) -> bool:
        """The file's counts have been reported: told here, or counted by the caller."""
        entry = self.entries.get(key)
        return entry is not None and (entry.get("told", True) or self.token(key) in self.counted)

    def tell(self, key: str) -> None:
        """The file's counts have been reported: a rerun does not report them again."""
        if key in self.entries:
            self._append(key, {**self.entries[key], "told": True})

    def _append(self, key: str, entry: dict[str, Any]) -> None:
        self.entries[key] = entry
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"file": key, **entry}, sort_keys=True) + "\n")


Counts = dict[str, list[int]]  # request id -> [found, anonymized]
