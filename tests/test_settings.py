"""Settings: one YAML file plus DSRFLOW_* environment variables (which win), paths relative to
the config file, keys never in the YAML, and errors that say what to do."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from dsrflow.crypto import encode_key, new_key
from dsrflow.model import Regime
from dsrflow.settings import ConfigError, load_settings, read_key_file, write_key_file


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DSRFLOW_* variable of the surrounding shell leaks in, and no ./dsrflow.yaml."""
    for name in list(os.environ):
        if name.startswith("DSRFLOW_"):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


def write_config(folder: Path, doc: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dsrflow.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_yaml_values_are_read(tmp_path: Path) -> None:
    path = write_config(tmp_path / "conf", {"at_risk_days": 5, "phone_regions": {"gdpr": "de"},
                                            "task_retry_delays": [1, 2]})
    settings = load_settings(path)
    assert settings.at_risk_days == 5
    # A mapping given replaces the defaults: regimes it leaves out read only +… numbers.
    assert settings.phone_regions == {Regime.GDPR: "DE"}
    assert settings.task_retry_delays == [1.0, 2.0]


def test_phone_regions_default_to_each_regimes_country(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, {}))
    assert settings.phone_regions == {Regime.PIPL: "CN", Regime.UK_GDPR: "GB", Regime.CCPA: "US"}


def test_the_old_single_phone_region_is_refused_with_the_new_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="phone_regions"):
        load_settings(write_config(tmp_path, {"phone_region": "CN"}))


def test_the_environment_beats_the_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path / "conf", {"at_risk_days": 5, "ledger_url": "sqlite:///a.db"})
    monkeypatch.setenv("DSRFLOW_AT_RISK_DAYS", "1")
    monkeypatch.setenv("DSRFLOW_LEDGER_URL", "postgresql+psycopg://db/ledger")

    settings = load_settings(path)

    assert settings.at_risk_days == 1
    assert settings.resolved_ledger_url == "postgresql+psycopg://db/ledger"


def test_the_config_file_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "conf", {"at_risk_days": 7})
    monkeypatch.setenv("DSRFLOW_CONFIG", str(path))
    settings = load_settings()
    assert settings.at_risk_days == 7
    assert settings.base_dir == path.parent.resolve()


def test_the_config_file_in_the_working_directory_is_used(tmp_path: Path) -> None:
    write_config(Path.cwd(), {"at_risk_days": 9})
    assert load_settings().at_risk_days == 9


def test_without_a_config_file_defaults_apply(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.at_risk_days == 3
    assert settings.base_dir == Path.cwd()


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    path = write_config(conf, {
        "ledger_url": "sqlite:///state/ledger.db",
        "datamap": "maps/datamap.yaml",
        "exports_dir": "out",
        "key_file": "keys.json",
    })
    write_key_file(conf / "keys.json")

    settings = load_settings(path)  # the shell is elsewhere (see clean_env)

    root = conf.resolve()
    assert settings.datamap_path == root / "maps" / "datamap.yaml"
    assert settings.exports_path == root / "out"
    assert settings.resolved_ledger_url == f"sqlite:///{root / 'state' / 'ledger.db'}"
    settings.keyring()  # the key file was found next to the config, not in the cwd


def test_a_relative_sqlite_path_with_an_explicit_driver_resolves_too(tmp_path: Path) -> None:
    """`sqlite+pysqlite:///ledger.db` is the same database as `sqlite:///ledger.db`; it too
    must live next to the config file, not wherever the shell happens to be."""
    conf = tmp_path / "conf"
    settings = load_settings(write_config(conf, {"ledger_url": "sqlite+pysqlite:///ledger.db"}))
    assert settings.resolved_ledger_url == f"sqlite+pysqlite:///{conf.resolve() / 'ledger.db'}"


def test_sqlite_url_forms_that_need_no_resolving(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    absolute = f"sqlite:///{tmp_path / 'abs.db'}"
    assert load_settings(write_config(conf, {"ledger_url": absolute})).resolved_ledger_url == (
        absolute
    )
    memory = "sqlite:///:memory:"
    assert load_settings(write_config(conf, {"ledger_url": memory})).resolved_ledger_url == memory


def test_absolute_paths_stay_as_they_are(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "dm.yaml"
    path = write_config(tmp_path / "conf", {"datamap": str(elsewhere)})
    assert load_settings(path).datamap_path == elsewhere


@pytest.mark.parametrize("field", ["token_key", "encryption_key", "signing_key"])
def test_keys_in_the_yaml_are_refused(tmp_path: Path, field: str) -> None:
    path = write_config(tmp_path, {field: encode_key(new_key())})
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert field in str(exc.value)
    assert "key_file" in str(exc.value)


def test_keys_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token, enc = new_key(), new_key()
    monkeypatch.setenv("DSRFLOW_TOKEN_KEY", encode_key(token))
    monkeypatch.setenv("DSRFLOW_ENCRYPTION_KEY", encode_key(enc))
    keyring = load_settings().keyring()
    assert keyring.token_key == token
    assert keyring.encryption_key == enc
    assert encode_key(token) not in repr(load_settings())


def test_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "keys.json"
    write_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    stored = read_key_file(path)
    assert set(stored) == {"token_key", "encryption_key", "signing_key"}
    assert len(set(stored.values())) == 3

    with pytest.raises(FileExistsError):
        write_key_file(path)
    assert path.read_bytes() == before


def test_key_file_gives_the_keyring(tmp_path: Path) -> None:
    write_key_file(tmp_path / "keys.json")
    path = write_config(tmp_path, {"key_file": "keys.json"})
    stored = json.loads((tmp_path / "keys.json").read_text())

    keyring = load_settings(path).keyring()

    assert encode_key(keyring.token_key) == stored["token_key"]
    assert encode_key(keyring.encryption_key) == stored["encryption_key"]
    # The same keys every time: tokens of earlier requests still match.
    assert load_settings(path).keyring().token("email", "a@b.c") == keyring.token("email", "a@b.c")


def test_the_environment_key_beats_the_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_key_file(tmp_path / "keys.json")
    path = write_config(tmp_path, {"key_file": "keys.json"})
    token = new_key()
    monkeypatch.setenv("DSRFLOW_TOKEN_KEY", encode_key(token))

    keyring = load_settings(path).keyring()

    assert keyring.token_key == token
    assert encode_key(keyring.encryption_key) == read_key_file(tmp_path / "keys.json")[
        "encryption_key"
    ]


def test_missing_keys_say_how_to_make_them(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, {}))
    with pytest.raises(ConfigError) as exc:
        settings.keyring()
    message = str(exc.value)
    assert "DSRFLOW_TOKEN_KEY" in message
    assert "key_file" in message
    assert "dsrflow keys new" in message


def test_one_missing_key_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSRFLOW_TOKEN_KEY", encode_key(new_key()))
    with pytest.raises(ConfigError, match="DSRFLOW_ENCRYPTION_KEY"):
        load_settings().keyring()


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, {"key_file": "nowhere.json"}))
    with pytest.raises(ConfigError, match=r"nowhere\.json: key file not found"):
        settings.keyring()


@pytest.mark.parametrize("content", ["not json", "[1, 2]"])
def test_a_broken_key_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "keys.json").write_text(content)
    settings = load_settings(write_config(tmp_path, {"key_file": "keys.json"}))
    with pytest.raises(ConfigError, match=r"keys\.json"):
        settings.keyring()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (encode_key(b"x" * 16), "32 bytes"),  # too short
        (encode_key(b"x" * 64), "32 bytes"),  # too long
        ("not base64 at all!", "base64"),
        ("ключ", "base64"),
    ],
)
def test_malformed_keys_are_config_errors(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("DSRFLOW_TOKEN_KEY", value)
    monkeypatch.setenv("DSRFLOW_ENCRYPTION_KEY", encode_key(new_key()))
    with pytest.raises(ConfigError) as exc:
        load_settings().keyring()
    assert "token_key" in str(exc.value)
    assert problem in str(exc.value)
    if value:
        assert value not in str(exc.value)  # a secret is never echoed


def test_a_malformed_key_in_the_key_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text(
        json.dumps({"token_key": encode_key(new_key()), "encryption_key": "short"})
    )
    settings = load_settings(write_config(tmp_path, {"key_file": "keys.json"}))
    with pytest.raises(ConfigError, match="encryption_key"):
        settings.keyring()


def test_an_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"at_risk_days": 2, "ledger_ulr": "sqlite:///x.db"})
    with pytest.raises(ConfigError, match="ledger_ulr"):
        load_settings(path)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"at_risk_days": -1}, "at_risk_days"),
        ({"at_risk_days": "soon"}, "at_risk_days"),
        ({"phone_regions": {"ccpa": "XX"}}, "phone_regions"),
        ({"phone_regions": {"narnia": "US"}}, "phone_regions"),
        ({"task_retries": -2}, "task_retries"),
    ],
)
def test_invalid_values_name_the_field(tmp_path: Path, doc: dict[str, object], field: str) -> None:
    path = write_config(tmp_path, doc)
    with pytest.raises(ConfigError, match=field) as exc:
        load_settings(path)
    assert str(path) in str(exc.value)


def test_an_invalid_environment_value_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSRFLOW_AT_RISK_DAYS", "soon")
    with pytest.raises(ConfigError, match="at_risk_days"):
        load_settings(write_config(tmp_path, {}))


@pytest.mark.parametrize("content", ["- a\n- b\n", "at_risk_days: [\n", "just text\n"])
def test_yaml_that_is_not_a_mapping_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "dsrflow.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=r"dsrflow\.yaml"):
        load_settings(path)


def test_an_empty_yaml_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "dsrflow.yaml"
    path.write_text("# nothing configured yet\n")
    settings = load_settings(path)
    assert settings.at_risk_days == 3
    assert settings.base_dir == tmp_path.resolve()


def test_a_missing_config_file_given_explicitly_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_settings(missing)
    monkeypatch.setenv("DSRFLOW_CONFIG", str(missing))
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings()


# -- limits: per-system concurrency across workers ----------------------------------------------
def test_system_limits_are_read_and_default_to_none(tmp_path: Path) -> None:
    path = write_config(tmp_path / "conf", {"limits": {"systems": {"userdb": 2, "adnet": 5},
                                                       "lease_seconds": 120}})
    limits = load_settings(path).limits
    assert limits.systems == {"userdb": 2, "adnet": 5} and limits.lease_seconds == 120
    assert load_settings(write_config(tmp_path / "none", {})).limits.systems == {}


@pytest.mark.parametrize(("limits", "where"), [
    ({"systems": {"userdb": 0}}, r"limits\.systems\.userdb: .*greater than or equal to 1"),
    ({"systems": {"userdb": "many"}}, r"limits\.systems\.userdb: .*valid integer"),
    ({"systems": ["userdb"]}, r"limits\.systems: .*valid dictionary"),
    # Prefect's server takes leases of 60 s to a day.
    ({"lease_seconds": 10}, r"limits\.lease_seconds: .*greater than or equal to 60"),
    ({"userdb": 1}, r"limits\.userdb: Extra inputs are not permitted"),
])
def test_invalid_limits_name_the_field_path(
    tmp_path: Path, limits: dict[str, object], where: str
) -> None:
    with pytest.raises(ConfigError, match=where):
        load_settings(write_config(tmp_path / "conf", {"limits": limits}))


def test_a_limit_on_a_system_the_data_map_lacks_is_refused(tmp_path: Path) -> None:
    """A typo in a system's name would protect nothing, silently."""
    from pipeline.limits import limit_name, system_limits
    from tests import sqlworld
    from tests.helpers import make_runtime

    _, url = sqlworld.sqlite_world(tmp_path, 1, 1)
    rt = make_runtime(tmp_path, sqlworld.datamap_doc(url), limits={"systems": {"db": 1}})
    try:
        assert system_limits(rt) == {"db": 1} and limit_name("db") == "dsrflow-system-db"
    finally:
        rt.close()
    rt = make_runtime(tmp_path, sqlworld.datamap_doc(url), limits={"systems": {"bd": 1}})
    try:
        with pytest.raises(ConfigError, match=r"limits\.systems\.bd: no system of that name"):
            system_limits(rt)
    finally:
        rt.close()
