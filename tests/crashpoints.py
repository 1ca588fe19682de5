"""`dsrflow run` that kills itself (SIGKILL: no cleanup, no finally) at a named point, for
the crash tests. Run as `python -m tests.crashpoints POINT CONFIG`.

Points: `after-gate` (leases taken, requests in progress, nothing done), `before-commit`
(the SQL erasure prepared and recorded as such, not committed), `after-commit` (the rows
are gone, the ledger does not know), `after-post` (the partner has the request, the ledger
does not know), `before-close` (everything done and certified, the requests not yet
closed), `after-objects` (the bucket's objects deleted, the ledger not told), `mid-logs`
(the first log file rewritten, reported and marked so in the connector's checkpoint, the
others not reached), `logs-reported` (the first log file rewritten and its report committed
to the ledger, the checkpoint not yet marked).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


def _die(*_: Any, **__: Any) -> Any:
    """SIGKILL this process and everything it started (its embedded Prefect server): the
    machine is lost. The caller starts it in a session of its own."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.killpg(os.getpgid(0), signal.SIGKILL)


def arm(point: str) -> None:
    if point == "after-gate":
        from pipeline import steps

        real_open = steps.open_requests

        def open_then_die(*args: Any, **kwargs: Any) -> Any:
            real_open(*args, **kwargs)
            _die()

        steps.open_requests = open_then_die  # type: ignore[assignment]
    elif point in ("before-commit", "after-commit"):
        from connectors.sql import SqlConnector

        real_erase = SqlConnector.erase

        def erase_then_die(self: SqlConnector, *args: Any, **kwargs: Any) -> Any:
            if point == "before-commit":
                record = kwargs["prepared"]

                def record_then_die(outcomes: Any) -> None:
                    record(outcomes)
                    _die()

                kwargs["prepared"] = record_then_die
            real_erase(self, *args, **kwargs)
            _die()

        SqlConnector.erase = erase_then_die  # type: ignore[method-assign]
    elif point == "after-objects":
        from connectors.objects import ObjectsConnector

        real_objects_erase = ObjectsConnector.erase

        def objects_then_die(self: ObjectsConnector, *args: Any, **kwargs: Any) -> Any:
            real_objects_erase(self, *args, **kwargs)
            _die()

        ObjectsConnector.erase = objects_then_die  # type: ignore[method-assign]
    elif point == "mid-logs":
        from connectors.logs import rewrite as logs_rewrite

        real_tell = logs_rewrite._Checkpoint.tell

        def tell_then_die(self: Any, key: str) -> None:
            real_tell(self, key)
            _die()

        logs_rewrite._Checkpoint.tell = tell_then_die  # type: ignore[method-assign]
    elif point == "logs-reported":
        from connectors.logs import rewrite as logs_rewrite

        logs_rewrite._Checkpoint.tell = _die  # type: ignore[method-assign]
    elif point == "after-post":
        from connectors.opendsr import OpenDsrPartner

        real_submit = OpenDsrPartner.submit

        def submit_then_die(self: OpenDsrPartner, *args: Any, **kwargs: Any) -> Any:
            real_submit(self, *args, **kwargs)
            _die()

        OpenDsrPartner.submit = submit_then_die  # type: ignore[method-assign]
    elif point == "before-close":
        from pipeline import closing

        closing.close_requests = _die  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    arm(sys.argv[1])
    from entrypoints.cli import app

    app(["run", "--config", sys.argv[2]])
