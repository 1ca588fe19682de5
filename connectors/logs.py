"""Logs connector: JSON-lines and plain-text logs, local files (glob) or S3 prefixes, plain
or gzip, described by a `kind: logs` system of the data map.

How it finds a subject's lines, in two stages whose cost does not grow with the batch:

1. A prefilter reads each file in blocks of 1 MiB and scans a *view* of the block: every
   byte translated by one table (ASCII letters lower-cased, `%` read as `@`, every byte that
   cannot be part of an identifier turned into a space), so that one literal per spelling
   family covers many spellings: `Zhang.Wei@Example.com` and `zhang.wei%40example.com`
   both contain the literal `zhang wei@`; `138 0013 8000`, `138-0013-8000` and
   `+86 138+0013+8000` all contain `138 0013 8000`; `uid=12&` and `"id": 12,` contain
   ` 12 `. The literals of the whole batch go into one multi-pattern matcher (Hyperscan,
   compiled once per call; a pure-Python fallback gives the same answers, slowly) which
   reports the few lines that may mention someone. Everything else is never parsed.
2. Each candidate line is read precisely, with fixed patterns that do not depend on the
   batch: email addresses (any case, `%40`, `%2B` in the local part), phone numbers (runs of
   digits with single spaces, dashes, `+` or `%20` between them; a leading `+`, `%2B`,
   `86`, `0086`; a slice of the run counts only when it starts and ends at a digit-group
   boundary), identifier tokens (whole tokens only: user 12 is not in `123` or `abc12`).
   A normalized value is looked up in a dictionary of the batch's identities. In a `text`
   source, the declared identity types are searched anywhere in the line, except numeric
   user ids: a bare number is a status code, a size or a count far more often than a
   user id, so a numeric user id counts only after a key (`uid=12`, `user_id: 12`,
   `"userId":"12"`, `user 12`, `/users/12`). In a `jsonl` source, only the declared fields
   (dotted paths into nested objects; arrays are searched element by element) are
   searched, each for its own type, and the value's own spelling is kept around the match;
   a line that is not JSON is searched as text for the types the fields declare.

Phone spellings the prefilter recognizes: the digits with or without +86 / 86 / 0086 /
%2B86, written together or grouped as the country writes them (`138 0013 8000`,
`010 1234 5678`) with any single separator. Other groupings (`1380 013 8000`) are found only
on lines that mention the subject in another way.

How it erases: each file is read once for the whole batch, and rewritten only if one of
its lines mentions a subject; each mention is replaced by the request's keyed pseudonym of
the normalized identity (or the data map's redaction marker), and every other byte of the
file is copied unchanged (in-kernel with copy_file_range where the file system supports
it). The new file is written next to the old one (`.<name>.<random>.dsrflow-tmp`), given
the old file's mode and times, and moved over it with `os.replace`, so a reader sees the
old file or the new one, never half of one. `.gz` files (by content) stay gzip. On S3, the
object is downloaded to `state_dir`, rewritten there, put back under its key with its
content type and metadata, and, in a versioned bucket, every other version and delete
marker of that key is deleted. Pseudonyms and markers are not identities, so a second run
finds nothing: it rewrites nothing.

Resuming: each finished file is recorded in `state_dir/erase-<batch>.json` (the batch is a
keyed fingerprint of its request ids and identities: no value is stored) with what the
file looks like afterwards (inode, size and mtime; the ETag on S3) and its counts. The
record is written before the new file is moved into place; a rerun of the same batch skips
a file whose look still matches and reports the recorded counts, so a crash at any point
followed by a rerun gives the same files and the same outcome as one clean run. Files whose
rewrite was interrupted leave a temporary file that the next run deletes.

A file that grows while it is rewritten (an active log) has its new lines processed before
the replacement; a writer that keeps the old file open goes on writing into the replaced
one, so rotate such files before erasing them.

Errors name the system, the source, the file and the operation, never a line or a value.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob as globmod
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, unquote_to_bytes

import phonenumbers

from connectors.base import Outcome, Records, Scope
from dsrflow.crypto import Pseudonymizer
from dsrflow.datamap import Action, LogSource, LogsSystem
from dsrflow.identities import Identity, IdentityType, Subject, phone_variants

_hs: Any
try:  # Hyperscan is the fast path; without it the same literals go through `re`.
    import hyperscan as _hs
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    _hs = None

BLOCK = 1 << 20  # bytes read per step: large enough for C to dominate, small for the cache
TMP_SUFFIX = ".dsrflow-tmp"
GZIP_LEVEL = 6
MAX_PHONE_DIGITS = 17  # 00 + a 3-digit country code + 12 digits
SHORT_ID = 6  # identifiers shorter than this are looked for as whole tokens only
DELETE_BATCH = 1000  # S3's limit of keys per DeleteObjects request
_GZIP_MAGIC = b"\x1f\x8b"

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
    r"([A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+)"
    r"(?![A-Za-z0-9-]|\.[A-Za-z0-9])"
)
_PHONE = (
    rf"(?:{_HEX_BEFORE}|(?<![A-Za-z0-9]))"
    r"(?:\+|%2[Bb])?[0-9]+(?:(?:[ +-]|%20)[0-9]+)*(?![A-Za-z0-9])"
)
_UID_KEY = (
    r"(?<![A-Za-z0-9_])(?:uid|userid|user_id|user-id|users?|account_?id)"
    r"(?:[\"']?\s*(?:[=:]|%3[Dd])\s*[\"']?|/|\s+)"
    r"([0-9]+)(?![A-Za-z0-9_]|[.-][A-Za-z0-9])"
)
_TOKEN = r"(?<![A-Za-z0-9_.-])[A-Za-z0-9_.-]+"
_DIGITS = r"[0-9]+"


@dataclass(frozen=True)
class _Patterns:
    email: re.Pattern[Any]
    phone: re.Pattern[Any]
    uid_key: re.Pattern[Any]
    token: re.Pattern[Any]
    digits: re.Pattern[Any]


def _compile(as_bytes: bool) -> _Patterns:
    def c(p: str, flags: int = 0) -> re.Pattern[Any]:
        return re.compile(p.encode() if as_bytes else p, flags | re.ASCII)

    return _Patterns(
        c(_EMAIL), c(_PHONE), c(_UID_KEY, re.IGNORECASE), c(_TOKEN), c(_DIGITS)
    )


_BYTES = _compile(True)
_STR = _compile(False)


class LogsError(RuntimeError):
    """A log file or object could not be read or rewritten. The message names the system,
    the source, the file and the operation, never a line or an identity."""


class LogsConfigError(ValueError):
    """The data map's logs system cannot be used as configured."""


# -- the batch's identities --------------------------------------------------------------
@dataclass(frozen=True)
class _Owner:
    """One identity of the batch and the requests it belongs to (usually one)."""

    identity: Identity
    request_ids: tuple[str, ...]


@dataclass
class _Index:
    """Normalized look-up keys of every identity in the batch."""

    emails: dict[str, _Owner] = field(default_factory=dict)
    phones: dict[str, _Owner] = field(default_factory=dict)  # every spelling of phone_variants
    user_ids: dict[str, _Owner] = field(default_factory=dict)
    device_ids: dict[str, _Owner] = field(default_factory=dict)  # case-folded
    openids: dict[str, _Owner] = field(default_factory=dict)  # third_party, provider dropped

    @classmethod
    def build(cls, subjects: Sequence[Subject]) -> _Index:
        owners: dict[Identity, set[str]] = {}
        for subject in subjects:
            for ident in subject.identities:
                owners.setdefault(ident, set()).add(subject.request_id)
        index = cls()
        for ident, rids in owners.items():
            owner = _Owner(ident, tuple(sorted(rids)))
            for table, key in index._keys(ident):
                # Two identities with one key (cannot happen after normalization, but a
                # batch may repeat a subject): the first one keeps the key.
                table.setdefault(key, owner)
        return index

    def _keys(self, ident: Identity) -> list[tuple[dict[str, _Owner], str]]:
        match ident.type:
            case IdentityType.EMAIL:
                return [(self.emails, ident.value.casefold())]
            case IdentityType.PHONE:
                return [(self.phones, v) for v in phone_variants(ident.value)]
            case IdentityType.USER_ID:
                return [(self.user_ids, ident.value)]
            case IdentityType.DEVICE_ID:
                return [(self.device_ids, ident.value.casefold())]
            case IdentityType.THIRD_PARTY:
                return [(self.openids, ident.value.partition(":")[2])]
        return []  # pragma: no cover

    def literals(self, types: frozenset[IdentityType]) -> list[bytes]:
        """The prefilter's literals (in view form) for the identities of `types`."""
        out: set[bytes] = set()
        if IdentityType.EMAIL in types:
            for email in self.emails:
                out.update(_email_literals(email))
        if IdentityType.PHONE in types:
            for owner in {id(o): o for o in self.phones.values()}.values():
                out.update(_phone_literals(owner.identity.value))
        if IdentityType.USER_ID in types:
            out.update(_id_literal(v) for v in self.user_ids)
        if IdentityType.DEVICE_ID in types:
            out.update(_id_literal(v) for v in self.device_ids)
        if IdentityType.THIRD_PARTY in types:
            out.update(_id_literal(v) for v in self.openids if v)
        return sorted(lit for lit in out if lit.strip())

    def __bool__(self) -> bool:
        return any((self.emails, self.phones, self.user_ids, self.device_ids, self.openids))


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


def _phone_literals(e164: str) -> list[bytes]:
    parsed = phonenumbers.parse(e164, None)
    national = phonenumbers.national_significant_number(parsed)
    grouped = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    groups = [g for g in re.split(r"[^0-9]+", grouped) if g][1:]  # without the country code
    out = [national.encode()]
    if len(groups) > 1:
        out.append(" ".join(groups).encode())
    return out


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
    base = run.start()
    lead = 1 if text[:1] in ("+", b"+") else 3 if text[:1] in ("%", b"%") else 0
    plus = lead > 0
    groups = [(g.start(), g.end(), g.group(0)) for g in pats.digits.finditer(text, lead)]
    if isinstance(text, bytes):
        groups = [(s, e, d.decode("ascii")) for s, e, d in groups]
    out = []
    i = 0
    while i < len(groups):
        best = None
        digits = ""
        for j in range(i, len(groups)):
            digits += groups[j][2]
            if len(digits) > MAX_PHONE_DIGITS:
                break
            owner = index.phones.get(digits)
            if owner is None and i == 0 and plus:
                owner = index.phones.get("+" + digits)
            if owner is not None:
                best = (j, owner)
        if best is None:
            i += 1
            continue
        j, owner = best
        start = 0 if (i == 0 and plus) else groups[i][0]
        out.append(_Mention(base + start, base + groups[j][1], owner))
        i = j + 1
    return out


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
    for m in pats.token.finditer(text):
        raw = m.group(0)
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


# -- stage 1: the prefilter --------------------------------------------------------------
class _Prefilter:
    """Literals of the batch, compiled once; `ends(view)` -> end offsets of every match."""

    def __init__(self, literals: list[bytes], force_fallback: bool = False) -> None:
        self.empty = not literals
        self._db: Any = None
        self._re: re.Pattern[bytes] | None = None
        if self.empty:
            return
        if _hs is not None and not force_fallback:
            self._db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
            self._db.compile(
                expressions=literals, ids=list(range(len(literals))),
                elements=len(literals), flags=0, literal=True,
            )
        else:
            # Every position, longest literal first: a lookahead finds overlapping matches.
            alternation = b"|".join(re.escape(x) for x in sorted(literals, key=len, reverse=True))
            self._re = re.compile(b"(?=(" + alternation + b"))")

    def ends(self, view: bytes | memoryview) -> list[int]:
        if self.empty:
            return []
        if self._db is not None:
            found: list[int] = []
            append = found.append

            def on_match(_id: int, _start: int, end: int, _flags: int, _ctx: object) -> None:
                append(end)

            self._db.scan(view, match_event_handler=on_match)
            return found
        assert self._re is not None
        return [m.start() + len(m.group(1)) for m in self._re.finditer(bytes(view))]


@dataclass
class _Hit:
    offset: int  # of the line's first byte in the (decompressed) stream
    length: int  # without the newline
    lineno: int  # 1-based; 0 unless line numbers were asked for
    line: bytes
    hits: _LineHits


def _scan(
    read: Callable[[int], bytes], prefilter: _Prefilter, reader: _LineReader,
    start: int = 0, line_numbers: bool = False,
) -> Iterator[_Hit]:
    """The lines of a stream that mention someone of the batch. `start` is the stream
    offset of the first byte `read` returns (it must be the start of a line)."""
    if prefilter.empty:
        return  # nobody of the batch has an identity this source could hold
    carry = b"\n"  # the newline before the first line: a delimiter for the view
    base = start - 1  # stream offset of carry[0]
    first_line = 1
    eof = False
    while not eof:
        data = read(BLOCK)
        if data:
            block = carry + data
            last = block.rfind(b"\n")
            if last <= 0:
                carry = block
                continue
        else:
            eof = True
            if len(carry) <= 1:
                break
            block = carry + b"\n"  # the last line has no newline: give the view one
            last = len(block) - 1
        view = block.translate(VIEW)
        seen: set[int] = set()
        for end in sorted(prefilter.ends(memoryview(view)[: last + 1])):
            pos = end - 1
            line_start = block.rfind(b"\n", 0, pos) + 1
            if line_start in seen or line_start == 0:
                continue
            seen.add(line_start)
            line_end = block.find(b"\n", pos)
            line = block[line_start:line_end]
            hits = reader.read(line)
            if hits is None:
                continue
            lineno = first_line + block.count(b"\n", 1, line_start) if line_numbers else 0
            yield _Hit(base + line_start, line_end - line_start, lineno, line, hits)
        if line_numbers:
            first_line += block.count(b"\n", 1, last + 1)
        base += last
        carry = block[last:]


# -- files ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _File:
    """A log file or object: `name` is what records and errors show (a path relative to
    the base directory, or the S3 key)."""

    source: str
    name: str
    path: str | None = None  # local files
    bucket: str | None = None  # S3 objects
    etag: str | None = None
    size: int = 0

    def look(self) -> list[Any]:
        """What the file looks like now (inode, size, mtime; S3: ETag, size)."""
        if self.path is not None:
            st = os.stat(self.path)
            return [st.st_ino, st.st_size, st.st_mtime_ns]
        return [self.etag, self.size]


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
    can (copy_file_range), else through a buffer."""
    while count > 0:
        try:
            n = os.copy_file_range(src, dst, count, offset)
        except OSError:
            n = 0
        if n <= 0:
            os.lseek(src, offset, os.SEEK_SET)
            chunk = os.read(src, min(count, BLOCK))
            if not chunk:
                raise LogsError("the file ended early while it was copied")
            n = os.write(dst, chunk)
        offset += n
        count -= n


Change = tuple[int, int, bytes]  # offset, length of the old line, new line


def _write_plain(src_path: str, dst_fd: int, changes: list[Change], size: int) -> None:
    src = os.open(src_path, os.O_RDONLY)
    try:
        pos = 0
        for offset, length, new in changes:
            _copy_range(src, dst_fd, pos, offset - pos)
            os.write(dst_fd, new)
            pos = offset + length
        _copy_range(src, dst_fd, pos, size - pos)
    finally:
        os.close(src)


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


def _remove_stale_temps(directory: str) -> None:
    """Temporary files of an interrupted rewrite hold a partial copy of a log: delete."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))


# -- checkpoints ---------------------------------------------------------------------------
class _Checkpoint:
    """Files already finished for one batch: name -> look afterwards, counts, state."""

    def __init__(self, state_dir: Path, batch: str) -> None:
        self.path = state_dir / f"erase-{batch}.json"
        self.entries: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text())["files"]
            except (ValueError, KeyError, TypeError):
                self.entries = {}  # a torn or foreign file: start over (erasure is idempotent)

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self.entries.get(key)
        return entry if isinstance(entry, dict) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self.entries[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ckpt-", suffix=TMP_SUFFIX)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "files": self.entries}, f, sort_keys=True)
        os.replace(tmp, self.path)


Counts = dict[str, list[int]]  # request id -> [found, anonymized]


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
        self.force_fallback = False  # tests: use the pure-Python prefilter

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3", endpoint_url=resolve_endpoint(self.name, self.system),
                region_name=self.system.region,
            )
        return self._client

    # -- contract ---------------------------------------------------------------------------
    def collect(self, subjects: Sequence[Subject], scope: Scope) -> dict[str, Records]:
        records: dict[str, Records] = {s.request_id: {} for s in subjects}
        if not self._in_scope(scope):
            return records
        index = _Index.build(subjects)
        for source_name, source in self.system.sources.items():
            reader, prefilter = self._stages(source, index)
            for file in self._files(source_name, source):
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
        index = _Index.build(subjects)
        for source_name, source in self.system.sources.items():
            reader, prefilter = self._stages(source, index)
            for outcome in outcomes.values():
                outcome.part(source_name)
            for file in self._files(source_name, source):
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
    ) -> dict[str, Outcome]:
        outcomes = {s.request_id: Outcome() for s in subjects}
        if not self._in_scope(scope):
            return outcomes
        index = _Index.build(subjects)
        replace = self._replacement(pseudonymizers)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            checkpoint = _Checkpoint(self.state_dir, self._batch(subjects, pseudonymizers))
            self._remove_stale_temps()
            for source_name, source in self.system.sources.items():
                reader, prefilter = self._stages(source, index)
                statement = hashlib.sha256(f"{source_name}:rewrite".encode()).hexdigest()
                for outcome in outcomes.values():
                    outcome.part(source_name)
                for file in self._files(source_name, source):
                    counts = self._erase_file(file, reader, prefilter, replace, checkpoint)
                    for rid, (found, anonymized) in counts.items():
                        part = outcomes[rid].part(source_name)
                        part.found += found
                        part.anonymized += anonymized
                        if found:
                            part.statements = [statement]
        return outcomes

    # -- erasing one file -------------------------------------------------------------------
    def _erase_file(
        self, file: _File, reader: _LineReader, prefilter: _Prefilter, replace: Replacement,
        checkpoint: _Checkpoint,
    ) -> Counts:
        if prefilter.empty:
            return {}
        key = f"{file.source}\x00{file.bucket or ''}\x00{file.name}"
        done = checkpoint.get(key)
        if done is not None and done.get("look") == file.look():
            if file.bucket is not None and not done.get("purged", True):
                self._purge_versions(file, done.get("version_id"))
                checkpoint.put(key, {**done, "purged": True})
            return {rid: list(c) for rid, c in done.get("counts", {}).items()}
        if file.bucket is not None:
            return self._erase_object(file, reader, prefilter, replace, checkpoint, key)
        assert file.path is not None
        return self._erase_local(file, file.path, reader, prefilter, replace, checkpoint, key)

    def _erase_local(
        self, file: _File, path: str, reader: _LineReader, prefilter: _Prefilter,
        replace: Replacement, checkpoint: _Checkpoint, key: str,
    ) -> Counts:
        counts: Counts = {}
        for _attempt in range(5):
            before = os.stat(path)
            changes, counts, gz = self._changes(file, path, reader, prefilter, replace)
            if not changes:
                after = os.stat(path)
                if _same(before, after):
                    checkpoint.put(key, {"look": file.look(), "counts": counts})
                    return counts
                continue  # it changed while we read it: look again
            directory = os.path.dirname(path) or "."
            fd, tmp = tempfile.mkstemp(
                dir=directory, prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX
            )
            try:
                try:
                    size = before.st_size
                    if gz:
                        _write_gzip(path, fd, changes)
                    else:
                        _write_plain(path, fd, changes, size)
                        size = self._append_tail(file, path, fd, size, reader, prefilter,
                                                 replace, counts)
                finally:
                    os.close(fd)
                after = os.stat(path)
                if after.st_size != size or (gz and not _same(before, after)):
                    os.unlink(tmp)
                    continue  # changed in a way we cannot follow: start over
                os.chmod(tmp, after.st_mode & 0o7777)
                with contextlib.suppress(PermissionError):
                    os.chown(tmp, after.st_uid, after.st_gid)
                os.utime(tmp, ns=(after.st_atime_ns, after.st_mtime_ns))
                st = os.stat(tmp)
                # Recorded before the move: if we die in between, the old file's look does
                # not match and the rerun does the file again.
                checkpoint.put(
                    key, {"look": [st.st_ino, st.st_size, st.st_mtime_ns], "counts": counts}
                )
                _replace_file(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return counts
        raise LogsError(
            f"systems.{self.name}.sources.{file.source}: {file.name} kept changing while it "
            "was rewritten; run again"
        )

    def _append_tail(
        self, file: _File, path: str, fd: int, size: int, reader: _LineReader,
        prefilter: _Prefilter, replace: Replacement, counts: Counts,
    ) -> int:
        """Lines appended while the file was rewritten: process them too. Returns the size
        of the original file that the new one now covers."""
        for _ in range(10):
            now = os.stat(path).st_size
            if now <= size:
                return size
            with open(path, "rb") as f:
                f.seek(size - 1)
                if size and f.read(1) != b"\n":
                    return -1  # the last line was still being written: start over
                tail_changes: list[Change] = []
                for hit in _scan(lambda n: f.read(n), prefilter, reader, start=size):
                    tail_changes.append((hit.offset, hit.length, hit.hits.rewrite(replace)))
                    _count(counts, hit.hits, rewritten=True)
            src = os.open(path, os.O_RDONLY)
            try:
                pos = size
                for offset, length, new in tail_changes:
                    _copy_range(src, fd, pos, offset - pos)
                    os.write(fd, new)
                    pos = offset + length
                _copy_range(src, fd, pos, now - pos)
            finally:
                os.close(src)
            size = now
        return size

    def _changes(
        self, file: _File, path: str, reader: _LineReader, prefilter: _Prefilter,
        replace: Replacement,
    ) -> tuple[list[Change], Counts, bool]:
        changes: list[Change] = []
        counts: Counts = {}
        try:
            with open(path, "rb") as raw:
                gz = _is_gzip(raw.read(2))
            with _open_stream(path) as stream:
                for hit in _scan(stream.read, prefilter, reader):
                    changes.append((hit.offset, hit.length, hit.hits.rewrite(replace)))
                    _count(counts, hit.hits, rewritten=True)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise self._error(file, "read", exc) from None
        return changes, counts, gz

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
            changes, counts, gz = self._changes(file, local, reader, prefilter, replace)
            if not changes:
                checkpoint.put(key, {"look": file.look(), "counts": counts})
                return counts
            fd, rewritten = tempfile.mkstemp(dir=work, prefix=".object.", suffix=TMP_SUFFIX)
            try:
                try:
                    if gz:
                        _write_gzip(local, fd, changes)
                    else:
                        _write_plain(local, fd, changes, os.stat(local).st_size)
                finally:
                    os.close(fd)
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
            status = self.client.get_bucket_versioning(Bucket=file.bucket).get("Status")
            if status not in ("Enabled", "Suspended"):
                return
            doomed: list[dict[str, str]] = []
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=file.bucket, Prefix=file.name
            )
            for page in pages:
                for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    if entry["Key"] == file.name and entry["VersionId"] != keep:
                        doomed.append({"Key": file.name, "VersionId": entry["VersionId"]})
            for i in range(0, len(doomed), DELETE_BATCH):
                result = self.client.delete_objects(
                    Bucket=file.bucket,
                    Delete={"Objects": doomed[i : i + DELETE_BATCH], "Quiet": True},
                )
                if result.get("Errors"):
                    code = result["Errors"][0].get("Code", "unknown")
                    raise LogsError(
                        f"systems.{self.name}.sources.{file.source}: s3://{file.bucket}/"
                        f"{file.name}: deleting old versions failed ({code})"
                    )
        except LogsError:
            raise
        except Exception as exc:
            raise self._error(file, "delete old versions", exc) from None

    # -- reading ----------------------------------------------------------------------------
    def _scan_file(
        self, file: _File, reader: _LineReader, prefilter: _Prefilter,
        line_numbers: bool = False,
    ) -> Iterator[_Hit]:
        if prefilter.empty:
            return
        try:
            if file.path is not None:
                with _open_stream(file.path) as local:
                    yield from _scan(local.read, prefilter, reader, line_numbers=line_numbers)
                return
            body = self.client.get_object(Bucket=file.bucket, Key=file.name)["Body"]
            try:
                head = body.read(2)
                stream: Any = _Prefixed(head, body)
                if _is_gzip(head):
                    stream = gzip.GzipFile(fileobj=stream, mode="rb")
                yield from _scan(stream.read, prefilter, reader, line_numbers=line_numbers)
            finally:
                body.close()
        except LogsError:
            raise
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise self._error(file, "read", exc) from None
        except Exception as exc:
            if file.bucket is None:
                raise
            raise self._error(file, "read", exc) from None

    def _files(self, source_name: str, source: LogSource) -> list[_File]:
        if source.path is not None:
            pattern = os.path.join(self.base_dir, source.path)
            paths = sorted(p for p in globmod.glob(pattern, recursive=True) if os.path.isfile(p))
            return [
                _File(source_name, Path(os.path.relpath(p, self.base_dir)).as_posix(), path=p)
                for p in paths
            ]
        assert source.s3 is not None
        files = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
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

    # -- helpers ----------------------------------------------------------------------------
    def _stages(self, source: LogSource, index: _Index) -> tuple[_LineReader, _Prefilter]:
        reader = _LineReader(source, index)
        return reader, _Prefilter(index.literals(reader.types), self.force_fallback)

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

    def _remove_stale_temps(self) -> None:
        _remove_stale_temps(str(self.state_dir / "tmp"))
        for source in self.system.sources.values():
            if source.path is None:
                continue
            pattern = os.path.join(self.base_dir, source.path)
            directories = {os.path.dirname(p) for p in globmod.glob(pattern, recursive=True)}
            literal_dir = os.path.dirname(pattern)
            if not globmod.has_magic(literal_dir):
                directories.add(literal_dir)
            for directory in directories:
                _remove_stale_temps(directory or ".")

    def _error(self, file: _File, operation: str, exc: BaseException) -> LogsError:
        where = f"s3://{file.bucket}/{file.name}" if file.bucket else file.name
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


def _count(counts: Counts, hits: _LineHits, rewritten: bool) -> None:
    for rid in hits.request_ids:
        entry = counts.setdefault(rid, [0, 0])
        entry[0] += 1
        if rewritten:
            entry[1] += 1


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_ino, b.st_size, b.st_mtime_ns)


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


def resolve_endpoint(name: str, system: LogsSystem) -> str | None:
    """The S3 endpoint: `endpoint_url`, the variable named by `endpoint_url_env`, or None
    (AWS)."""
    if system.endpoint_url is not None:
        return system.endpoint_url
    if system.endpoint_url_env is None:
        return None
    url = os.environ.get(system.endpoint_url_env)
    if not url:
        raise LogsConfigError(
            f"systems.{name}.endpoint_url_env: environment variable "
            f"{system.endpoint_url_env} is not set"
        )
    return url
