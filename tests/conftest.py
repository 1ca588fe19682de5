"""Shared fixtures: a real PostgreSQL server, a real Prefect server, keys and settings.

PostgreSQL is started from the installed binaries on loopback (as the `postgres` user when
the suite runs as root, since PostgreSQL refuses root). If it cannot start, the tests that
need it fail with the reason; they never skip.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

# Prefect reads its settings at import: point it at a throw-away home before anything
# imports it, and keep a privacy product from reporting usage.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="dsrflow-test-prefect-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from dsrflow.crypto import Keyring, new_key  # noqa: E402
from dsrflow.ledger import Ledger  # noqa: E402
from tests.postgres import PostgresUnavailable, postgres  # noqa: E402

# -- what `make test-fast` leaves out ------------------------------------------------------------
SERVERS = frozenset({"postgres_server", "postgres_url", "prefect_server", "s3_endpoint"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that starts or uses a server `server`, from the fixtures it uses
    (a `db_url` test on its PostgreSQL side too), so that `make test-fast` can leave them
    out without anyone keeping a list."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if SERVERS & set(getattr(item, "fixturenames", ())) or (
            params.get("db_url") == "postgresql"
        ):
            item.add_marker(pytest.mark.server)


# -- the command line ------------------------------------------------------------------------
@pytest.fixture
def cli_runtime() -> Iterator[None]:
    """The CLI installs a process-wide runtime; close it after the test."""
    from pipeline.runtime import set_runtime

    yield
    previous = set_runtime(None)
    if previous is not None:
        previous.close()


# -- S3 (moto stands in for AWS only) ---------------------------------------------------------
@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 on loopback: a real HTTP endpoint, so presigned links can be fetched."""
    from entrypoints.demo import moto_server

    with moto_server() as endpoint:
        yield endpoint


# -- PostgreSQL ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for the session; yields an admin URL."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(postgres())
        except PostgresUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = postgres_server.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


# -- keys -------------------------------------------------------------------------------------
@pytest.fixture
def keyring() -> Keyring:
    return Keyring(token_key=new_key(), encryption_key=new_key())


@pytest.fixture
def ledger(db_url: str, keyring: Keyring) -> Iterator[Ledger]:
    """A migrated ledger, on SQLite and on PostgreSQL."""
    ledger = Ledger(db_url, keyring)
    ledger.migrate()
    yield ledger
    ledger.dispose()


# -- Prefect ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prefect_server() -> Iterator[list[Path]]:
    """One real Prefect server (SQLite-backed) for the whole session. Yields the folders
    where Prefect keeps what it is given (its database, PREFECT_HOME), which the privacy
    tests scan for identities."""
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        db_url = prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
        db_dir = Path(str(db_url).split(":///", 1)[1]).parent
        yield [db_dir, _PREFECT_HOME]
