"""Batch-shaped statements: ids go into IN lists of at most `CHUNK` (far below SQLite's and
PostgreSQL's parameter limits), so a batch of any size is a handful of statements."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

CHUNK = 500


def chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for i in range(0, len(ids), CHUNK):
        yield list(ids[i:i + CHUNK])
