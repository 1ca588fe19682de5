"""Ed25519 keys for signing erasure certificates.

Keys travel as standard base64 of their 32 raw bytes (url-safe base64 is accepted too, so
a key copied from a key file written by hand still works). A key id is the first 16 hex
digits of the SHA-256 of the raw public key: short enough to read out on the phone to a
regulator, long enough that two keys of one installation never collide.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from dsrflow.crypto import KeyMaterialError

RAW_KEY_BYTES = 32
KEY_ID_HEX = 16


def new_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def encode_signing_key(key: Ed25519PrivateKey) -> str:
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode("ascii")


def decode_signing_key(text: str, name: str = "signing_key") -> Ed25519PrivateKey:
    """The private key; errors name the setting and never echo the value."""
    return Ed25519PrivateKey.from_private_bytes(_raw(text, name))


def encode_public_key(key: Ed25519PublicKey) -> str:
    return base64.b64encode(_public_raw(key)).decode("ascii")


def decode_public_key(text: str, name: str = "public key") -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_raw(text, name))


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(_public_raw(key)).hexdigest()[:KEY_ID_HEX]


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw(text: str, name: str) -> bytes:
    try:
        cleaned = text.strip().replace("-", "+").replace("_", "/").encode("ascii")
        # validate: a stray character is an error, not something to skip over.
        raw = base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise KeyMaterialError(f"{name} is not valid base64") from exc
    if len(raw) != RAW_KEY_BYTES:
        raise KeyMaterialError(f"{name} must decode to {RAW_KEY_BYTES} bytes, got {len(raw)}")
    return raw
