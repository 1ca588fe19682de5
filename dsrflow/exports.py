"""Where collected records wait for delivery: one encrypted file per request and system.

The access package (zip, manifest, delivery link) is built from these; until then they are
AES-GCM under the installation key, bound to the request and system, and once it is
delivered they are deleted.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from dsrflow.crypto import Keyring
from dsrflow.files import write_private


def export_path(root: Path, request_id: str, system: str) -> Path:
    return root / request_id / f"{system}.json.enc"


def write_export(
    root: Path, keyring: Keyring, request_id: str, system: str, records: dict[str, Any]
) -> Path:
    path = export_path(root, request_id, system)
    blob = keyring.encrypt(json.dumps(records, sort_keys=True).encode(), f"{request_id}/{system}")
    # 0600 in 0700 folders; atomic: a crash never leaves half a file under the final name.
    return write_private(path, blob)


def exported_systems(root: Path, request_id: str) -> list[str]:
    """The systems that have collected records of this request, sorted."""
    folder = root / request_id
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".json.enc") for p in folder.glob("*.json.enc"))


def discard_exports(root: Path, request_id: str) -> None:
    """Delete a request's collected records (once its package holds them)."""
    folder = root / request_id
    for path in folder.glob("*.json.enc"):
        path.unlink()
    with contextlib.suppress(FileNotFoundError, OSError):
        folder.rmdir()


def read_export(root: Path, keyring: Keyring, request_id: str, system: str) -> dict[str, Any]:
    blob = export_path(root, request_id, system).read_bytes()
    data: dict[str, Any] = json.loads(keyring.decrypt(blob, f"{request_id}/{system}"))
    return data
