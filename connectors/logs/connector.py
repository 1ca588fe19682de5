"""The logs connector: plans the files of each source, runs the two stages over them, and
rewrites the files that mention a subject (see `docs/logs-erasure.md`)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob as globmod
import gzip
import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from connectors.base import Outcome, Records, Scope, resolve_endpoint
from connectors.logs.errors import LogsConfigError, LogsError
from connectors.logs.matching import Replacement, _Index, _LineHits, _LineReader, _Owner
from connectors.logs.prefilter import BLOCK, _Hit, _Prefilter, _scan
from connectors.logs.rewrite import (
    PENDING_SUFFIX,
    TMP_SUFFIX,
    Change,
    Counts,
    _Checkpoint,
    _commit_in_place,
    _copy_in_place,
    _Counted,
    _drop_in_place,
    _File,
    _is_gzip,
    _look,
    _new_temp,
    _NoTemp,
    _open_in_place,
    _open_stream,
    _remove_stale_temps,
    _replace_file,
    _Rewriter,
    _write_gzip,
)
from connectors.s3 import delete_versions, key_versions, versioned
from dsrflow.crypto import Pseudonymizer
from dsrflow.datamap import Action, LogSource, LogsSystem
from dsrflow.identities import Identity, Subject

_NO_FILE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})



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
        progress: Callable[[Mapping[str, Outcome], str], None] | None = None,
        counted: Collection[str] = (),
    ) -> dict[str, Outcome]:
        """Rewrite every file holding the subjects' lines, one file at a time. Reports what
        this call changed: a file an earlier call already rewrote holds none of their
        lines, and counts nothing. `progress`, if given, is told after each file what the
        requests with lines in it have had changed so far, with a token naming the file's
        rewrite, so the counts of a run stopped half-way are not lost. `counted` are the
        tokens whose reports the caller has recorded: a file an earlier call rewrote and
        reported, then stopped before marking it reported, is not reported again."""
        outcomes = {s.request_id: Outcome() for s in subjects}
        if not self._in_scope(scope):
            return outcomes
        index = _Index.build(subjects, self.system.phone_region)
        replace = self._replacement(pseudonymizers)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            # Before anything is read: no run may read a file half copied into its inode.
            self._finish_in_place_copies()
            checkpoint = _Checkpoint(self.state_dir, self._batch(subjects, pseudonymizers),
                                     counted)
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
                        progress({rid: outcomes[rid] for rid in changed},
                                 checkpoint.token(file.key))
                    if counts:
                        # Told (or, with no `progress`, in what this call returns): a
                        # rerun of the batch does not report the file again. A crash
                        # before this leaves it untold: the rerun reports it unless
                        # `counted` has its token (the report arrived).
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
            if not checkpoint.reported(key):
                # Rewritten by a call that stopped before reporting it (or finished by
                # recovery): this call reports it.
                return {rid: list(c) for rid, c in done.get("counts", {}).items()}
            if not done.get("told", True):
                checkpoint.tell(key)  # reported by a call that stopped before telling
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
        with self._read(file) as read:
            yield from _scan(read, prefilter, reader, line_numbers=line_numbers)

    @contextlib.contextmanager
    def _read(self, file: _File) -> Iterator[Callable[[int], bytes]]:
        """A read function over the file's bytes, gunzipped if need be (an object is
        streamed, no copy kept); a failed read is named by the file and the operation,
        never by a value."""
        try:
            if file.path is not None:
                with _open_stream(file.path) as local:
                    yield local.read
                return
            body = self.client.get_object(Bucket=file.bucket, Key=file.name)["Body"]
            try:
                head = body.read(2)
                stream: Any = _Prefixed(head, body)
                if _is_gzip(head):
                    stream = gzip.GzipFile(fileobj=stream, mode="rb")
                yield stream.read
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
