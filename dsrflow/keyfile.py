"""The key file: the installation's secrets in one JSON file, readable by its owner only.

    {"token_key": ..., "encryption_key": ..., "signing_key": ...,
     "retired_signing_keys": [{"key_id": ..., "public_key": ..., "retired_at": ...}]}

`retired_signing_keys` holds the public halves of signing keys that `dsrflow keys
rotate-signing` replaced: certificates they signed still verify, and say which key signed
them. Only public keys are kept: a retired key can check, never sign.

The token and encryption keys are never rotated here (`refuse_rotation` says why).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dsrflow.crypto import KeyMaterialError, encode_key, new_key
from dsrflow.errors import ConfigError
from dsrflow.files import FILE_MODE, private_dir
from dsrflow.signing import (
    decode_public_key,
    decode_signing_key,
    encode_public_key,
    encode_signing_key,
    key_id,
    new_signing_key,
)

SECRET_FIELDS = ("token_key", "encryption_key", "signing_key")
RETIRED = "retired_signing_keys"

# Why the other two keys stay: said by `dsrflow keys rotate-encryption` and the README.
NO_ROTATION = (
    "token_key and encryption_key cannot be rotated in place. The ledger holds look-up "
    "tokens keyed by token_key (repeat requests, erasure tombstones, legal holds) for "
    "subjects whose identities it no longer keeps, so they cannot be recomputed under a "
    "new key, and its audit chain is keyed by it too; the identities of open requests, "
    "encrypted under encryption_key, would have to be re-encrypted in the same step. Back "
    "the keys up apart from the ledger; if one leaked, see README, 'Key rotation'."
)


@dataclass(frozen=True)
class VerificationKey:
    """A public key that certificates are checked against, and where it comes from."""

    public_key: Ed25519PublicKey
    retired_at: str | None  # None: the current signing key's public half; "": not recorded

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def describe(self) -> str:
        if self.retired_at is None:
            return "the current signing key"
        if not self.retired_at:
            return "a retired signing key"
        return f"a retired signing key (retired {self.retired_at})"


def read_key_file(path: Path) -> dict[str, str]:
    """The secrets a key file holds (those of SECRET_FIELDS it has)."""
    return {k: str(v) for k, v in _key_file_json(path).items() if k in SECRET_FIELDS}


def retired_signing_keys(path: Path) -> list[VerificationKey]:
    """The public keys a key file keeps for checking certificates its earlier signing keys
    signed; errors name the entry, never echo a key."""
    entries = _key_file_json(path).get(RETIRED, [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: {RETIRED} must be a list")
    keys = []
    for i, entry in enumerate(entries):
        where = f"{path}: {RETIRED}[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("public_key"), str):
            raise ConfigError(f"{where}: needs a public_key")
        try:
            public = decode_public_key(entry["public_key"], "public_key")
        except KeyMaterialError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if entry.get("key_id") not in (None, key_id(public)):
            raise ConfigError(f"{where}: key_id does not match its public_key")
        keys.append(VerificationKey(public, str(entry.get("retired_at") or "")))
    return keys


def write_key_file(path: Path) -> None:
    """Fresh keys, readable by the owner only (0600; a missing folder is made 0700)."""
    private_dir(path.parent)
    keys = {
        "token_key": encode_key(new_key()),
        "encryption_key": encode_key(new_key()),
        "signing_key": encode_signing_key(new_signing_key()),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), FILE_MODE)  # whatever the umask
        json.dump(keys, fh, indent=2)


def add_signing_key(path: Path) -> Ed25519PrivateKey:
    """Give a key file written before certificates existed a signing key. Refuses a file
    that has one: replacing it would orphan every certificate it signed."""
    data = _key_file_json(path)
    if "signing_key" in data:
        raise ConfigError(f"{path} already has a signing key; refusing to replace it "
                          "(`dsrflow keys rotate-signing` retires it instead)")
    key = new_signing_key()
    data["signing_key"] = encode_signing_key(key)
    _replace(path, data)
    return key


def rotate_signing_key(
    path: Path, now: datetime | None = None
) -> tuple[VerificationKey, Ed25519PrivateKey]:
    """A new signing key; the current one's public half moves to `retired_signing_keys`,
    so certificates it signed still verify. Returns the retired key and the new one."""
    data = _key_file_json(path)
    text = data.get("signing_key")
    if not isinstance(text, str):
        raise ConfigError(f"{path} has no signing key to rotate (`dsrflow keys add-signing`)")
    try:
        old = decode_signing_key(text, "signing_key").public_key()
    except KeyMaterialError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    retired = retired_signing_keys(path)  # a damaged list is refused before anything moves
    when = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    entry = VerificationKey(old, when)
    if all(k.key_id != entry.key_id for k in retired):
        data[RETIRED] = [*data.get(RETIRED, []), {
            "key_id": entry.key_id, "public_key": encode_public_key(old), "retired_at": when,
        }]
    key = new_signing_key()
    data["signing_key"] = encode_signing_key(key)
    _replace(path, data)
    return entry, key


def _key_file_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: key file not found") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: key file is not JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: key file must hold a JSON object")
    return data


def _replace(path: Path, data: dict[str, Any]) -> None:
    # A new file beside the old one, swapped in whole: a crash leaves the old keys intact,
    # and the file is never readable by others, not even for a moment.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
