"""What the logs connector's tests share: pseudonym keys for subjects, the pseudonym a key
makes, log files written line by line, and what verification still finds."""

from __future__ import annotations

import gzip
from pathlib import Path

from connectors.logs import LogsConnector
from dsrflow.crypto import Pseudonymizer, new_key
from dsrflow.identities import Subject


def keys_for(*subjects: Subject) -> dict[str, Pseudonymizer]:
    return {s.request_id: Pseudonymizer(new_key()) for s in subjects}


def pseudonym(keys: dict[str, Pseudonymizer], rid: str, value: str) -> str:
    out = keys[rid](value)
    assert out is not None
    return out


def write(path: Path, lines: list[str], newline_at_end: bool = True,
          gz: bool | None = None) -> bytes:
    """Write `lines` (gzip-compressed if `gz`, by default when the name ends in .gz);
    return the uncompressed bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(lines) + ("\n" if newline_at_end else "")).encode()
    compress = path.suffix == ".gz" if gz is None else gz
    path.write_bytes(gzip.compress(data) if compress else data)
    return data


def remaining(c: LogsConnector, subjects: list[Subject]) -> dict[str, int]:
    return {rid: o.total("remaining") for rid, o in c.verify(subjects, None).items()}
