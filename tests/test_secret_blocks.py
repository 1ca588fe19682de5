"""Secrets from Prefect Secret blocks (issue 17): every secret a team keeps in Prefect —
the ledger URL, a SQL system's URL, the token, encryption and signing keys — is named in
the YAML by its block (`<setting>_block: NAME`), read from a real Prefect server only when
it is used, and never reaches a file dsrflow writes, Prefect's database (runs, parameters,
logs) or the terminal. Names are checked when the YAML is read; errors say which setting."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from dsrflow.certificates import read_certificate, verify_certificate
from dsrflow.crypto import encode_key, new_key
from dsrflow.datamap import DataMapError, load_datamap
from dsrflow.intake import submit
from dsrflow.leakscan import files_containing
from dsrflow.settings import ConfigError, load_settings
from dsrflow.signing import decode_signing_key, encode_signing_key, new_signing_key
from tests import sqlworld
from tests.helpers import flat, invoke, ticket

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DSRFLOW_"):
            monkeypatch.delenv(name)


def _save(value: str) -> str:
    """A Secret block holding `value`, under a fresh name (the server is the session's)."""
    from prefect.blocks.system import Secret

    name = f"dsrflow-test-{uuid.uuid4().hex[:12]}"
    Secret(value=SecretStr(value)).save(name)
    return name


def _write(folder: Path, name: str, doc: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -- a whole installation on blocks -----------------------------------------------------------
def test_an_erasure_runs_with_every_secret_in_prefect_blocks_and_none_leaks(
    tmp_path: Path, postgres_url: str, prefect_server: list[Path],
    capfd: pytest.CaptureFixture[str],
) -> None:
    from prefect.logging.handlers import APILogHandler

    from flows.request import process_requests
    from pipeline.runtime import Runtime, set_runtime

    # The test server trusts every connection: a password in the URL gets in, and shows
    # whether it travelled anywhere it should not.
    password = f"pw-{uuid.uuid4().hex}"
    with_password = make_url(postgres_url).set(password=password).render_as_string(
        hide_password=False)
    engine = sa.create_engine(postgres_url)
    world = sqlworld.generate(random.Random(17), 4)
    sqlworld.load(engine, world)
    token, encryption = encode_key(new_key()), encode_key(new_key())
    signing = encode_signing_key(new_signing_key())

    datamap = sqlworld.datamap_doc(postgres_url)
    del datamap["systems"]["db"]["url"]
    datamap["systems"]["db"]["url_block"] = _save(with_password)
    _write(tmp_path, "datamap.yaml", datamap)
    config = _write(tmp_path, "dsrflow.yaml", {
        "datamap": "datamap.yaml",
        "ledger_url_block": _save(with_password),
        "token_key_block": _save(token),
        "encryption_key_block": _save(encryption),
        "signing_key_block": _save(signing),
    })

    rt = Runtime(load_settings(config))
    previous = set_runtime(rt)
    try:
        rid = submit(rt.ledger, rt.datamap, ticket(
            "B-1", "erasure", [{"type": "email", "value": world.user(2)["email"]}])).request_id
        assert process_requests([rid]) == {rid: "completed"}
        # The ledger is the block's database, reached with the block's URL.
        assert rt.ledger.engine.url.password == password
        assert rt.sql("db").engine.url.password == password
        # The certificate is signed by the block's signing key.
        certificate = read_certificate(rt.settings.certificates_path / f"{rid}.json")
        verified = verify_certificate(certificate, [decode_signing_key(signing).public_key()])
        assert verified.request_id == rid
    finally:
        set_runtime(previous)
        rt.close()
        engine.dispose()

    APILogHandler().flush()  # logs are shipped in the background: send them now
    secrets = [password, token, encryption, signing]
    # Prefect stores the blocks themselves encrypted; nothing else of it holds a secret.
    assert files_containing(prefect_server, secrets) == {}
    assert files_containing(prefect_server, [rid]) != {}  # the run was recorded there
    # Nor does anything dsrflow wrote (the YAML, the certificate), nor the terminal.
    assert files_containing([tmp_path], secrets) == {}
    said = "".join(capfd.readouterr())
    assert not [s for s in secrets if s in said]


def test_a_missing_block_names_the_setting_that_wanted_it(
    tmp_path: Path, prefect_server: list[Path],
) -> None:
    from connectors.base import ConnectorConfigError
    from connectors.sql import SchemaMismatch
    from pipeline.runtime import Runtime

    config = _write(tmp_path, "dsrflow.yaml", {"signing_key_block": "no-such-block"})
    with pytest.raises(ConfigError, match="signing_key_block: no Prefect Secret block named "
                                          "'no-such-block'"):
        load_settings(config).signing_key_pair()
    result = invoke("keys", "public-key", "--config", config)
    assert result.exit_code == 2
    assert "signing_key_block: no Prefect Secret block named 'no-such-block'" in flat(
        result.stderr)

    datamap = sqlworld.datamap_doc("sqlite:///unused.sqlite")
    del datamap["systems"]["db"]["url"]
    datamap["systems"]["db"]["url_block"] = "no-such-database"
    _write(tmp_path, "datamap.yaml", datamap)
    _write(tmp_path, "dsrflow.yaml", {"datamap": "datamap.yaml"})
    rt = Runtime(load_settings(tmp_path / "dsrflow.yaml"))
    try:
        with pytest.raises((SchemaMismatch, ConnectorConfigError),
                           match=r"systems\.db\.url_block: no Prefect Secret block"):
            rt.connector("db")
    finally:
        rt.close()


# -- what is checked without a server ---------------------------------------------------------
@pytest.mark.parametrize(("doc", "env", "said"), [
    ({"token_key_block": "Token_Key"}, {},
     "token_key_block: 'Token_Key' is not a Prefect block name"),
    ({"ledger_url_block": "ledger"}, {"DSRFLOW_LEDGER_URL": "sqlite:///x.db"},
     "ledger_url_block: give at most one of ledger_url (DSRFLOW_LEDGER_URL) and "
     "ledger_url_block"),
    ({"signing_key_block": "signing"}, {"DSRFLOW_SIGNING_KEY": "k"},
     "give at most one of signing_key (DSRFLOW_SIGNING_KEY) and signing_key_block"),
])
def test_block_settings_are_checked_when_the_yaml_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, doc: dict[str, Any],
    env: dict[str, str], said: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings(_write(tmp_path, "dsrflow.yaml", doc))
    assert said in str(err.value)


def test_a_ledger_url_with_a_password_is_refused_in_the_yaml_and_not_repeated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql+psycopg://dsrflow:hunter2-secret@db/ledger"
    with pytest.raises(ConfigError) as err:
        load_settings(_write(tmp_path, "dsrflow.yaml", {"ledger_url": url}))
    assert "ledger_url: the URL holds a password" in str(err.value)
    assert "ledger_url_block" in str(err.value) and "hunter2" not in str(err.value)
    # From the environment it is what production does.
    monkeypatch.setenv("DSRFLOW_LEDGER_URL", url)
    assert load_settings(_write(tmp_path, "dsrflow.yaml", {})).resolved_ledger_url == url


@pytest.mark.parametrize(("change", "said"), [
    ({"url_block": "userdb-url"}, "systems.db: give exactly one of url, url_env "
                                  "or url_block"),
    ({"url": None, "url_block": "User DB"}, "systems.db.url_block: 'User DB' is "
                                            "not a Prefect block name"),
])
def test_a_data_maps_url_block_is_checked_with_its_path(
    tmp_path: Path, change: dict[str, Any], said: str,
) -> None:
    datamap = sqlworld.datamap_doc("sqlite:///users.sqlite")
    datamap["systems"]["db"].update(change)
    datamap["systems"]["db"] = {k: v for k, v in datamap["systems"]["db"].items()
                                if v is not None}
    with pytest.raises(DataMapError) as err:
        load_datamap(_write(tmp_path, "datamap.yaml", datamap))
    assert said in flat(str(err.value))


LAZY = """
import json, sys
from dsrflow.settings import load_settings
from dsrflow.datamap import load_datamap
settings = load_settings(sys.argv[1])
load_datamap(settings.datamap_path)
settings.certificates_path, settings.batches
print(json.dumps("prefect" in sys.modules))
"""


def test_naming_blocks_loads_no_prefect_until_a_secret_is_used(tmp_path: Path) -> None:
    """Settings and a data map that name blocks are read (and `datamap check` passes)
    without importing Prefect: only using the secret needs a Prefect API."""
    datamap = sqlworld.datamap_doc("sqlite:///users.sqlite")
    del datamap["systems"]["db"]["url"]
    datamap["systems"]["db"]["url_block"] = "userdb-url"
    _write(tmp_path, "datamap.yaml", datamap)
    config = _write(tmp_path, "dsrflow.yaml", {
        "datamap": "datamap.yaml", "ledger_url_block": "ledger-url",
        "token_key_block": "token-key", "encryption_key_block": "encryption-key",
        "signing_key_block": "signing-key"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSRFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", LAZY, str(config)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) is False
    checked = invoke("datamap", "check", tmp_path / "datamap.yaml")
    assert checked.exit_code == 0, checked.output
