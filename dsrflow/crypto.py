"""Keys, look-up tokens, encryption at rest and keyed pseudonyms.

Plain SHA-256 of an email or phone number is reversible by trying every candidate, so
every token here is keyed (HMAC-SHA256). Pseudonyms written into user data use a
per-request key that is destroyed when the request closes, which leaves them irreversible.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
PSEUDONYM_PREFIX = "pn_"
PSEUDONYM_HEX = 24
_PSEUDONYM_RE = re.compile(rf"{PSEUDONYM_PREFIX}[0-9a-f]{{{PSEUDONYM_HEX}}}")


class KeyMaterialError(ValueError):
    """A key is missing or malformed."""


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def decode_key(text: str, name: str) -> bytes:
    try:
        # validate: a stray character is an error, not something to skip over.
        key = base64.b64decode(text.strip().encode("ascii"), altchars=b"-_", validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise KeyMaterialError(f"{name} is not valid url-safe base64") from exc
    if len(key) != KEY_BYTES:
        raise KeyMaterialError(f"{name} must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def keyed_digest(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True, repr=False)
class Keyring:
    """The installation's long-lived secrets. `repr` is suppressed so a key never lands in
    a log or traceback."""

    token_key: bytes
    encryption_key: bytes

    def token(self, kind: str, value: str) -> str:
        """A stable look-up token for a normalized identity."""
        return keyed_digest(self.token_key, f"{kind}\x00{value}")

    def encrypt(self, plaintext: bytes, context: str) -> bytes:
        """AES-256-GCM; `context` (e.g. the request id) is bound as associated data so a
        ciphertext moved to another row fails to decrypt."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self.encryption_key).encrypt(nonce, plaintext, context.encode())

    def decrypt(self, blob: bytes, context: str) -> bytes:
        nonce, body = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
        return AESGCM(self.encryption_key).decrypt(nonce, body, context.encode())

    def __repr__(self) -> str:
        return "Keyring(<redacted>)"


@dataclass(frozen=True, repr=False)
class Pseudonymizer:
    """Keyed pseudonyms under one request's key: the same value maps to the same pseudonym
    within the request (joins still line up), and nobody can map it back once the key is
    destroyed."""

    key: bytes

    def __call__(self, value: object) -> str | None:
        if value is None:
            return None
        text = str(value)
        if is_pseudonym(text):
            return text  # idempotent: a second erasure leaves a pseudonym as it is
        return PSEUDONYM_PREFIX + keyed_digest(self.key, text)[:PSEUDONYM_HEX]

    def __repr__(self) -> str:
        return "Pseudonymizer(<redacted>)"


def is_pseudonym(value: object) -> bool:
    return isinstance(value, str) and _PSEUDONYM_RE.fullmatch(value) is not None
