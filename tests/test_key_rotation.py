"""Key rotation (issue 17): `dsrflow keys rotate-signing` replaces the certificate signing
key and keeps the old public half, so a certificate issued before the rotation still
verifies and says a retired key signed it; a key the installation never had is refused;
the token and encryption keys are not rotated, and the command says why."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsrflow.certificates import FORMAT, sign_certificate, write_certificate
from dsrflow.keyfile import read_key_file, write_key_file
from dsrflow.settings import ConfigError, load_settings
from dsrflow.signing import (
    decode_signing_key,
    encode_public_key,
    encode_signing_key,
    key_id,
    new_signing_key,
)
from tests.helpers import flat, invoke


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DSRFLOW_"):
            monkeypatch.delenv(name)


def _body(request_id: str) -> dict[str, Any]:
    """The fields a certificate's signature check reads; a real one holds much more
    (tests/test_certificates.py), none of which rotation changes."""
    return {"format": FORMAT, "issued_at": "2026-11-22T08:00:00Z",
            "request": {"id": request_id, "ticket_id": f"T-{request_id}"},
            "outcome": {"status": "complete", "reasons": []}}


def _certificate(folder: Path, request_id: str, key: Ed25519PrivateKey) -> Path:
    path, _ = write_certificate(sign_certificate(_body(request_id), key), folder)
    return path


def _installation(tmp_path: Path) -> tuple[Path, Path]:
    """A dsrflow.yaml and the key file `dsrflow keys new` wrote for it."""
    keys = tmp_path / "keys.json"
    write_key_file(keys)
    config = tmp_path / "dsrflow.yaml"
    config.write_text(yaml.safe_dump({"key_file": "keys.json"}))
    return config, keys


def _signing_key(keys: Path) -> Ed25519PrivateKey:
    return decode_signing_key(read_key_file(keys)["signing_key"])


def test_a_certificate_signed_before_a_rotation_still_verifies_and_names_the_retired_key(
    tmp_path: Path,
) -> None:
    config, keys = _installation(tmp_path)
    old = _signing_key(keys)
    old_id = key_id(old.public_key())
    before = _certificate(tmp_path / "certs", "r-before", old)

    rotated = invoke("keys", "rotate-signing", keys)

    assert rotated.exit_code == 0, rotated.output
    new = _signing_key(keys)
    new_id = key_id(new.public_key())
    assert new_id != old_id
    assert f"retired signing key {old_id}" in rotated.stdout
    assert f"new signing key {new_id}" in rotated.stdout
    # The new private key is never printed; only its public half.
    assert encode_signing_key(new) not in rotated.output
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    # What signs from now on: the new key.
    assert key_id(load_settings(config).signing_key_pair().public_key()) == new_id

    old_check = invoke("certificate", "verify", before, "--config", config)
    assert old_check.exit_code == 0, old_check.output
    assert f"key {old_id}" in old_check.stdout
    assert "signed by a retired signing key (retired 20" in flat(old_check.stdout)

    after = _certificate(tmp_path / "certs", "r-after", new)
    new_check = invoke("certificate", "verify", after, "--config", config)
    assert new_check.exit_code == 0, new_check.output
    assert f"signed by the current signing key ({new_id})" in flat(new_check.stdout)


def test_a_certificate_signed_by_a_key_the_installation_never_had_fails(
    tmp_path: Path,
) -> None:
    config, keys = _installation(tmp_path)
    assert invoke("keys", "rotate-signing", keys).exit_code == 0
    stranger = new_signing_key()
    forged = _certificate(tmp_path / "certs", "r-forged", stranger)

    result = invoke("certificate", "verify", forged, "--config", config)

    assert result.exit_code == 1
    assert f"INVALID: key {key_id(stranger.public_key())} is not trusted" in flat(result.stderr)


def test_every_retired_key_verifies_after_several_rotations(tmp_path: Path) -> None:
    config, keys = _installation(tmp_path)
    certificates = []
    for n in range(3):
        certificates.append((_certificate(tmp_path / "certs", f"r-{n}", _signing_key(keys)),
                             key_id(_signing_key(keys).public_key())))
        assert invoke("keys", "rotate-signing", keys).exit_code == 0

    for path, signer in certificates:
        result = invoke("certificate", "verify", path, "--config", config)
        assert result.exit_code == 0, result.output
        assert "retired signing key" in result.stdout and signer in result.stdout
    retired = json.loads(keys.read_text())["retired_signing_keys"]
    assert [entry["key_id"] for entry in retired] == [s for _, s in certificates]
    listed = invoke("keys", "public-key", "--config", config)
    assert all(f"retired: {s}" in listed.stdout for _, s in certificates), listed.output


def test_rotating_a_key_file_without_a_signing_key_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"token_key": "x", "encryption_key": "y"}))
    before = keys.read_bytes()

    result = invoke("keys", "rotate-signing", keys)

    assert result.exit_code == 1
    assert "no signing key to rotate" in result.stderr
    assert keys.read_bytes() == before


def test_a_tampered_retired_key_is_refused_not_trusted(tmp_path: Path) -> None:
    """A retired entry whose id does not match its key: someone edited the list."""
    config, keys = _installation(tmp_path)
    data = json.loads(keys.read_text())
    data["retired_signing_keys"] = [{"key_id": "0000000000000000", "retired_at": "2026-01-01",
                                     "public_key": encode_public_key(
                                         new_signing_key().public_key())}]
    keys.write_text(json.dumps(data))
    cert = _certificate(tmp_path / "certs", "r-1", _signing_key(keys))

    result = invoke("certificate", "verify", cert, "--config", config)

    assert result.exit_code == 2
    assert "retired_signing_keys[0]: key_id does not match its public_key" in flat(result.stderr)


def test_retired_keys_in_the_yaml_verify_with_a_signing_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the signing key lives in the environment (or a Secret block), the retired
    public keys go in the YAML: they are public."""
    old, new = new_signing_key(), new_signing_key()
    config = tmp_path / "dsrflow.yaml"
    config.write_text(yaml.safe_dump(
        {"retired_signing_keys": [encode_public_key(old.public_key())]}))
    monkeypatch.setenv("DSRFLOW_SIGNING_KEY", encode_signing_key(new))
    cert = _certificate(tmp_path / "certs", "r-1", old)

    result = invoke("certificate", "verify", cert, "--config", config)

    assert result.exit_code == 0, result.output
    assert f"signed by a retired signing key ({key_id(old.public_key())})" in flat(result.stdout)


def test_a_retired_key_in_the_yaml_that_is_not_a_key_names_its_place(tmp_path: Path) -> None:
    config = tmp_path / "dsrflow.yaml"
    config.write_text(yaml.safe_dump({"retired_signing_keys": [
        encode_public_key(new_signing_key().public_key()), "not-a-key"]}))
    with pytest.raises(ConfigError, match=r"retired_signing_keys\.1: .*not valid base64"):
        load_settings(config)


def test_the_encryption_and_token_keys_are_not_rotated_and_the_refusal_says_why(
    tmp_path: Path,
) -> None:
    _, keys = _installation(tmp_path)
    before = keys.read_bytes()

    result = invoke("keys", "rotate-encryption", keys)

    assert result.exit_code == 2
    said = flat(result.stderr)
    assert "cannot be rotated in place" in said
    assert "tokens keyed by token_key" in said and "encrypted under encryption_key" in said
    assert keys.read_bytes() == before
