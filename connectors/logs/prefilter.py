"""The prefilter: the batch's literals found in a block of bytes at grep's speed (Hyperscan
where installed, `re` otherwise), the first stage that leaves the precise matching only
the candidate lines."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from connectors.logs.matching import _SPACE, VIEW, _LineHits, _LineReader

_hs: Any
try:  # Hyperscan is the fast path; without it the same literals go through `re`.
    import hyperscan as _hs
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    _hs = None

BLOCK = 1 << 20  # bytes read per step: large enough for C to dominate, small for the cache


# -- stage 1: the prefilter --------------------------------------------------------------
class _Prefilter:
    """The batch's literals, compiled once per call.

    `engine` is how they are matched: "view" (the literals, over each block's view: the
    way for large batches), "raw" (each literal as a pattern of byte classes over the block
    itself, so the block needs no view; equivalent byte for byte, faster for small batches
    whose patterns compile quickly) or "re" (Python's `re` over the view: the fallback
    without Hyperscan, slow). `ends(data)` gives the end offset of every match. Without an
    `engine`, `_engine_for` chooses for `scan_bytes`, the bytes the literals will scan."""

    def __init__(self, literals: list[bytes], engine: str | None = None,
                 scan_bytes: int | None = None) -> None:
        self.empty = not literals
        if engine is None:
            engine = "re" if _hs is None else _engine_for(literals, scan_bytes)
        self.engine = engine
        self._db: Any = None
        self._re: re.Pattern[bytes] | None = None
        if self.empty:
            return
        if engine == "re":
            # Every position, longest literal first: a lookahead finds overlapping matches.
            alternation = b"|".join(re.escape(x) for x in sorted(literals, key=len, reverse=True))
            self._re = re.compile(b"(?=(" + alternation + b"))")
            return
        self._db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
        if engine == "raw":
            patterns = [b"".join(_RAW_CLASS[c] for c in lit) for lit in literals]
            self._db.compile(expressions=patterns, ids=list(range(len(patterns))),
                             elements=len(patterns), flags=0)
        else:
            self._db.compile(expressions=literals, ids=list(range(len(literals))),
                             elements=len(literals), flags=0, literal=True)

    @property
    def wants_view(self) -> bool:
        return self.engine != "raw"

    def ends(self, data: bytes | memoryview) -> list[int]:
        if self.empty:
            return []
        if self._db is not None:
            found: list[int] = []
            append = found.append

            def on_match(_id: int, _start: int, end: int, _flags: int, _ctx: object) -> None:
                append(end)

            self._db.scan(data, match_event_handler=on_match)
            return found
        assert self._re is not None
        return [m.start() + len(m.group(1)) for m in self._re.finditer(bytes(data))]


def _raw_class(view_byte: int) -> bytes:
    """The raw bytes that the view turns into `view_byte`, as a pattern."""
    members = bytes(c for c in range(256) if VIEW[c] == view_byte)
    if len(members) == 1:
        return re.escape(members)
    if view_byte == _SPACE:  # everything that is not part of an identifier
        return rb"[^A-Za-z0-9_@%]"
    return b"[" + b"".join(b"\\x%02x" % c for c in members) + b"]"


_RAW_CLASS = {b: _raw_class(b) for b in set(VIEW)}
RAW_MAX = 2000  # literals up to which "raw" beats "view" (its compile time grows faster)
# What the choice weighs (measured on a 2-core EPYC VM, hyperscan 0.9): translating a
# block into the view costs about 0.65 s/GiB; compiling n literals with a byte class inside
# them (`203 0 113 7`, `138 0013 8000`, `zhang wei@`) as raw patterns about
# 1e-4 * n**1.4 s (0.06 s for 100, 0.3 s for 300, 0.75 s for 600); other literals little.
VIEW_S_PER_BYTE = 0.65 / 2**30
RAW_COMPILE_S = 1e-4


def _engine_for(literals: list[bytes], scan_bytes: int | None) -> str:
    """"raw" while compiling the literals as byte-class patterns costs less than
    translating the bytes they scan into the view, else "view". IP addresses and grouped
    phone numbers are literals of short digit runs between classes, the costly kind: a
    batch that has many of them is read through the view unless its logs are large."""
    if len(literals) > RAW_MAX:
        return "view"
    if scan_bytes is None:
        return "raw"
    classed = sum(1 for lit in literals if b" " in lit.strip(b" ") or b"@" in lit)
    return "raw" if RAW_COMPILE_S * classed ** 1.4 <= VIEW_S_PER_BYTE * scan_bytes else "view"


@dataclass
class _Hit:
    offset: int  # of the line's first byte in the (decompressed) stream
    length: int  # without the newline
    lineno: int  # 1-based; 0 unless line numbers were asked for
    line: bytes
    hits: _LineHits


@dataclass
class _Block:
    """Whole lines of a stream: `data[0]` is the newline before the first of them (a
    delimiter for the view), `data[last]` the newline after the last one."""

    data: bytes
    last: int
    base: int  # stream offset of data[0]
    first_line: int  # number of the line that starts at data[1] (if counted)


def _blocks(read: Callable[[int], bytes], start: int, line_numbers: bool) -> Iterator[_Block]:
    carry = [b"\n"]  # the unfinished line (in pieces: a very long line costs no copies)
    base = start - 1
    first_line = 1
    while True:
        data = read(BLOCK)
        if data:
            newline = data.rfind(b"\n")
            if newline < 0:
                carry.append(data)  # a line longer than a block: read on
                continue
            head = b"".join(carry)
            block = head + data
            last = len(head) + newline
        elif len(carry) > 1 or len(carry[0]) > 1:
            block = b"".join(carry) + b"\n"  # the last line has no newline: give it one
            last = len(block) - 1
        else:
            return
        yield _Block(block, last, base, first_line)
        if not data:
            return
        if line_numbers:
            first_line += block.count(b"\n", 1, last + 1)
        base += last
        carry = [block[last:]]


def _scan(
    read: Callable[[int], bytes], prefilter: _Prefilter, reader: _LineReader,
    start: int = 0, line_numbers: bool = False,
) -> Iterator[_Hit]:
    """The lines of a stream that mention someone of the batch. `start` is the stream
    offset of the first byte `read` returns (it must be the start of a line)."""
    if prefilter.empty:
        return  # nobody of the batch has an identity this source could hold
    translate = prefilter.wants_view
    for block in _blocks(read, start, line_numbers):
        data = block.data.translate(VIEW) if translate else block.data
        ends = prefilter.ends(memoryview(data)[: block.last + 1])
        yield from _lines(block, ends, reader, line_numbers)


def _lines(
    block: _Block, ends: list[int], reader: _LineReader, line_numbers: bool
) -> Iterator[_Hit]:
    data = block.data
    seen: set[int] = set()
    for end in sorted(ends):
        pos = end - 1
        line_start = data.rfind(b"\n", 0, pos) + 1
        if line_start in seen or line_start == 0:
            continue
        seen.add(line_start)
        line_end = data.find(b"\n", pos)
        line = data[line_start:line_end]
        hits = reader.read(line)
        if hits is None:
            continue
        lineno = block.first_line + data.count(b"\n", 1, line_start) if line_numbers else 0
        yield _Hit(block.base + line_start, line_end - line_start, lineno, line, hits)
