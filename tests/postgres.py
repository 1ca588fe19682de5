"""A throwaway PostgreSQL server on loopback (the test suite's and the benchmarks'): its
own data folder, no fsync, trust authentication, run as `postgres` when run as root."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


def bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        candidate = Path(out.stdout.strip())
        if (candidate / "pg_ctl").exists():
            return candidate
    except (OSError, subprocess.CalledProcessError):
        pass
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists():
            return candidate
    raise PostgresUnavailable(
        "PostgreSQL server binaries (pg_ctl, initdb) not found: install them "
        "(`apt-get install postgresql`); .ci/run does this"
    )


def create_database(admin_url: str, name: str) -> str:
    """A new, empty database `name` on the server of `admin_url`; returns its URL."""
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:  # an identifier: quoted by the dialect, not bound
            quoted = admin.dialect.identifier_preparer.quote_identifier(name)
            conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
    finally:
        admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres(settings: str = "") -> Iterator[str]:
    """Start a server, yield an admin URL, stop and remove it. `settings`: more `-c`
    options for the server."""
    binaries = bindir()
    base = Path(tempfile.mkdtemp(prefix="dsrflow-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        base.chmod(0o700)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data, log = base / "data", base / "log"

    def run(*args: str) -> None:
        result = subprocess.run([*prefix, *args], capture_output=True, text=True)
        if result.returncode != 0:
            detail = result.stderr.strip() or result.stdout.strip()
            if log.exists():
                detail += "\n" + log.read_text()[-2000:]
            raise PostgresUnavailable(f"PostgreSQL could not start ({args[0]}): {detail}")

    try:
        run(str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
            "--encoding=UTF8", "--no-sync")
        run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off {settings}", "start")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast",
                        "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
