"""Helpers shared by the flow and CLI tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from dsrflow.crypto import encode_key, new_key
from dsrflow.settings import Settings
from dsrflow.signing import encode_signing_key, new_signing_key
from tasks.runtime import Runtime


def make_runtime(tmp: Path, datamap_doc: dict[str, Any], ledger_url: str | None = None) -> Runtime:
    path = tmp / "datamap.yaml"
    path.write_text(yaml.safe_dump(datamap_doc, sort_keys=False))
    settings = Settings(
        base_dir=tmp,
        ledger_url=ledger_url or f"sqlite:///{tmp / 'ledger.db'}",
        datamap=path,
        exports_dir=tmp / "exports",
        token_key=encode_key(new_key()),  # type: ignore[arg-type]
        encryption_key=encode_key(new_key()),  # type: ignore[arg-type]
        signing_key=encode_signing_key(new_signing_key()),  # type: ignore[arg-type]
        task_retries=1,
        task_retry_delays=[0.1],
    )
    return Runtime(settings)


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
