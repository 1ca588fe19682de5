"""What dsrflow creates that can hold personal data or keys is its owner's only, whatever the
umask: files 0600, folders 0700 — the SQLite ledger and its -wal, -shm and lock files,
Prefect's home, collected records, certificates, local packages and the support outbox,
key files, connectors' checkpoints and the demo's folder."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dsrflow.crypto import Keyring, new_key
from dsrflow.files import private_dir, private_file, write_private


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def permissive_umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_helpers_make_private_files_and_folders(
    tmp_path: Path, permissive_umask: int
) -> None:
    folder = private_dir(tmp_path / "a" / "b")
    assert [mode(tmp_path / "a"), mode(folder)] == [0o700, 0o700]
    assert mode(private_file(tmp_path / "c" / "f")) == 0o600
    assert mode(tmp_path / "c") == 0o700
    written = write_private(tmp_path / "d" / "g.bin", b"x")
    assert (mode(written), written.read_bytes(), mode(tmp_path / "d")) == (0o600, b"x", 0o700)
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["g.bin"]  # no temporary left


def test_what_exists_keeps_its_mode(tmp_path: Path, permissive_umask: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    (shared / "f").write_text("x")
    (shared / "f").chmod(0o640)
    private_dir(shared)
    private_file(shared / "f")
    assert (mode(shared), mode(shared / "f")) == (0o755, 0o640)


def test_the_sqlite_ledger_and_its_wal_shm_and_lock_files(
    tmp_path: Path, permissive_umask: int
) -> None:
    from dsrflow.ledger import Ledger

    database = tmp_path / "state" / "ledger.db"
    ledger = Ledger(f"sqlite:///{database}", Keyring(token_key=new_key(),
                                                     encryption_key=new_key()))
    try:
        ledger.migrate()  # WAL mode, and writes: the -wal and -shm files exist now
        ledger.audit("test.event", None, {"n": 1})
        files = [database, Path(f"{database}-wal"), Path(f"{database}-shm"),
                 Path(f"{database}.lock")]
        assert all(f.exists() for f in files)
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert mode(database.parent) == 0o700
    finally:
        ledger.dispose()


def test_prefects_home(tmp_path: Path, permissive_umask: int,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    from dsrflow.prefect_env import prepare

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", os.environ["PREFECT_HOME"])  # restored afterwards
    home = tmp_path / ".dsrflow" / "prefect"
    prepare(home)
    assert os.environ["PREFECT_HOME"] == str(home)
    assert (mode(home.parent), mode(home)) == (0o700, 0o700)


def test_collected_records(tmp_path: Path, permissive_umask: int) -> None:
    from dsrflow.exports import read_export, write_export

    keyring = Keyring(token_key=new_key(), encryption_key=new_key())
    root = tmp_path / "exports"
    path = write_export(root, keyring, "r-1", "db", {"users": [{"id": 1}]})
    assert [mode(root), mode(path.parent), mode(path)] == [0o700, 0o700, 0o600]
    assert read_export(root, keyring, "r-1", "db") == {"users": [{"id": 1}]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["db.json.enc"]


def test_certificates(tmp_path: Path, permissive_umask: int) -> None:
    from dsrflow.certificates import write_certificate

    out = tmp_path / "certificates"
    document: dict[str, Any] = {"certificate": {"request": {"id": "r-1"}}, "signature": {}}
    path, _ = write_certificate(document, out)
    assert (mode(out), mode(path)) == (0o700, 0o600)


def test_local_packages_and_the_support_outbox(tmp_path: Path, permissive_umask: int) -> None:
    from dsrflow.delivery import PackageSettings, PackageStore

    settings = PackageSettings(local_dir=Path("out/packages"), handover_dir=Path("handover"))
    store = PackageStore(settings, tmp_path)
    delivered = store.put("r-1", b"sealed", datetime(2026, 11, 20, tzinfo=UTC))
    package = Path(delivered.location)
    assert [mode(tmp_path / "out"), mode(package.parent), mode(package)] == [
        0o700, 0o700, 0o600]
    outbox = store.handover("r-1", "T-1", delivered, b"key", "kid")
    assert (mode(outbox.parent), mode(outbox)) == (0o700, 0o600)
    assert store.expired_handovers(datetime(2026, 12, 31, tzinfo=UTC)) == ["r-1"]


def test_key_files(tmp_path: Path, permissive_umask: int) -> None:
    from dsrflow.settings import add_signing_key, write_key_file

    path = tmp_path / "secrets" / "keys.json"
    write_key_file(path)
    assert (mode(path.parent), mode(path)) == (0o700, 0o600)
    older = tmp_path / "older.json"
    older.write_text('{"token_key": "x", "encryption_key": "y"}')
    older.chmod(0o600)
    add_signing_key(older)
    assert mode(older) == 0o600


def test_connector_checkpoints(tmp_path: Path, permissive_umask: int) -> None:
    from tests.helpers import make_runtime

    doc = {"version": "t", "policy_version": "t", "systems": {"applogs": {
        "kind": "logs", "sources": {"app": {"path": "logs/*.log", "format": "text",
                                            "identities": ["email"]}}}}}
    rt = make_runtime(tmp_path, doc, state_dir=tmp_path / "state")
    try:
        rt.connector("applogs")
        assert (mode(tmp_path / "state"), mode(tmp_path / "state" / "applogs")) == (
            0o700, 0o700)
    finally:
        rt.close()


def test_the_demo_folder(tmp_path: Path, permissive_umask: int) -> None:
    from entrypoints.demo import _fresh_folder

    out = tmp_path / "demo-out"
    _fresh_folder(out)
    assert mode(out) == 0o700
    _fresh_folder(out)  # made by the demo: rebuilt, private again
    assert mode(out) == 0o700
