"""Prefect's environment, set before Prefect is imported.

`import prefect` creates `~/.prefect` unless PREFECT_HOME is set, and Prefect reports usage
unless told not to: neither is acceptable for a privacy tool, so every entry point that
runs a flow calls `prepare` first.
"""

from __future__ import annotations

import os
from pathlib import Path

from dsrflow.files import private_dir

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
