"""Search files for identities: how the demo and the tests prove that Prefect's database,
logs and result storage never received personal data."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def files_containing(folders: Iterable[Path], needles: Iterable[str]) -> dict[str, list[str]]:
    """Which needles occur, as UTF-8 bytes, in which files under the folders. Raw bytes on
    purpose: SQLite pages, WAL files and pickles are all searched the same way."""
    wanted = sorted({n for n in needles if n})
    hits: dict[str, list[str]] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            found = [n for n in wanted if n.encode() in data]
            if found:
                hits[str(path)] = found
    return hits
