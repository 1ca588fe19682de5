"""Prefect's environment, set before Prefect is imported.

`import prefect` creates `~/.prefect` unless PREFECT_HOME is set, and Prefect reports usage
unless told not to: neither is acceptable for a privacy tool, so every entry point that
runs a flow calls `prepare` first.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dsrflow.files import private_dir, private_file

PRIVACY_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # The embedded server needs ~24 s to migrate a fresh database on a small machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def prepare(home: Path) -> None:
    """Point Prefect at `home` (settings' `prefect_home`) unless a real server is chosen
    with PREFECT_API_URL: the embedded server's database then lives where dsrflow's
    settings say, not wherever the shell's PREFECT_HOME happens to point."""
    for key, value in PRIVACY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not os.environ.get("PREFECT_API_URL"):
        # Prefect keeps run states, logs and its database here: the owner's only (0700).
        private_dir(home)
        os.environ["PREFECT_HOME"] = str(home)


EMBEDDED_LOCK = "embedded-server.lock"


@contextmanager
def embedded_server_turn(home: Path, say: Callable[[str], None]) -> Iterator[None]:
    """Run a flow on the embedded Prefect server only when no other dsrflow process is
    running one on the same Prefect home. Two embedded servers migrating one database at
    once kill each other (one dies mid-migration, and its run's requests end half-done):
    the second process waits for the first, and says so. With PREFECT_API_URL set, runs
    share that server and nothing waits here (the request leases keep them apart)."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    lock = private_file(home / EMBEDDED_LOCK)
    with open(lock, "r+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another dsrflow run is using the embedded Prefect server in {home}: "
                "waiting for it to finish (point PREFECT_API_URL at a Prefect server to run "
                "side by side)")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
