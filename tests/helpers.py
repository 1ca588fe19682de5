"""Helpers shared by the flow and CLI tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner, Result

from dsrflow.crypto import encode_key, new_key
from dsrflow.settings import Settings, write_key_file
from dsrflow.signing import encode_signing_key, new_signing_key
from dsrflow.tickets import Ticket
from pipeline.runtime import Runtime

WISHE = Path(__file__).resolve().parent.parent / "examples" / "wishe"


def make_runtime(
    tmp: Path, datamap_doc: dict[str, Any], ledger_url: str | None = None, **settings: Any
) -> Runtime:
    """A runtime over `datamap_doc`, with fresh keys; `settings` are more settings (or
    other task retries)."""
    path = tmp / "datamap.yaml"
    path.write_text(yaml.safe_dump(datamap_doc, sort_keys=False))
    config = Settings(
        base_dir=tmp,
        ledger_url=ledger_url or f"sqlite:///{tmp / 'ledger.db'}",
        datamap=path,
        exports_dir=tmp / "exports",
        token_key=encode_key(new_key()),  # type: ignore[arg-type]
        encryption_key=encode_key(new_key()),  # type: ignore[arg-type]
        signing_key=encode_signing_key(new_signing_key()),  # type: ignore[arg-type]
        **{"task_retries": 1, "task_retry_delays": [0.1], **settings},
    )
    return Runtime(config)


def ticket(
    ticket_id: str,
    type_: str,
    identities: list[dict[str, str]],
    verified: bool = True,
    regime: str = "pipl",
    **extra: Any,
) -> dict[str, Any]:
    received = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    return {
        "ticket_id": ticket_id,
        "type": type_,
        "regime": regime,
        "identities": identities,
        "verification": {
            "method": "sms_code",
            "verified_at": (received + timedelta(minutes=5)).isoformat() if verified else None,
        },
        "channel": "app",
        "received_at": received.isoformat(),
        **extra,
    }


# -- a year whose Chinese working-day calendar the installed `holidays` does not have ---------
# A hypothetical State Council notice for 2027: two holidays in the first week of March and
# Saturday 6 March a make-up working day.
CN_2027 = "CN:\n  2027:\n    holidays: [2027-03-03, 2027-03-04]\n    workdays: [2027-03-06]\n"
# Received Mon 1 Mar 2027, 10:00 in Shanghai: Tue 2 = 1, (3, 4 off), Fri 5 = 2, Sat 6 = 3,
# 8..12 = 8, 15..19 = 13, Mon 22 = 14, Tue 23 = 15: due at the end of 23 March in Shanghai
# (22 March without the notice).
RECEIVED_2027 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
DUE_2027 = datetime(2027, 3, 23, 15, 59, 59, tzinfo=UTC)


def ticket_2027(valid: Ticket) -> Ticket:
    """A valid ticket, received at RECEIVED_2027 instead (and verified five minutes later,
    if it is verified). `model_copy` skips validation: the intake refuses a receipt in the
    future of the real clock, and what is under test is what happens after it."""
    verification = valid.verification
    if verification is not None and verification.verified_at is not None:
        verification = verification.model_copy(
            update={"verified_at": RECEIVED_2027 + timedelta(minutes=5)})
    return valid.model_copy(update={"received_at": RECEIVED_2027,
                                    "verification": verification})


def invoke(*args: str | Path) -> Result:
    """The `dsrflow` command line, in a terminal wide enough that rich neither wraps nor
    truncates its tables."""
    from entrypoints.cli import app, console, err

    # rich reads COLUMNS once, when a console is made (whichever test imported the CLI
    # first): set the widths themselves.
    widths = console.width, err.width
    console.width = err.width = 250
    try:
        return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    finally:
        console.width, err.width = widths


def flat(text: str) -> str:
    """Text with every run of whitespace made one space (rich wraps long lines)."""
    return " ".join(text.split())


def cli_config(folder: Path, datamap_doc: dict[str, Any],
               ledger_url: str = "sqlite:///ledger.db") -> Path:
    """A `dsrflow.yaml` in `folder`, everything relative to it: the data map, a fresh key
    file, the ledger and Prefect's home."""
    (folder / "datamap.yaml").write_text(yaml.safe_dump(datamap_doc, allow_unicode=True))
    write_key_file(folder / "keys.json")
    path = folder / "dsrflow.yaml"
    path.write_text(yaml.safe_dump({
        "ledger_url": ledger_url, "datamap": "datamap.yaml", "key_file": "keys.json",
        "prefect_home": "prefect",
    }))
    return path


def wishe_datamap(userdb_url: str) -> dict[str, Any]:
    """The Wishe data map with its user database at `userdb_url`."""
    doc: dict[str, Any] = yaml.safe_load((WISHE / "datamap.yaml").read_text())
    userdb = doc["systems"]["userdb"]
    del userdb["url_env"]
    userdb["url"] = userdb_url
    return doc
