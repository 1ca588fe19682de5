"""What a running process needs, built once from settings: the ledger, the data map and the
connectors. Flows and tasks receive request ids only and reach everything else through here,
so no identity ever travels as a Prefect parameter.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, cast

from sqlalchemy.engine import URL

from connectors.base import Connector, ConnectorConfigError
from connectors.partner import Partner
from connectors.partners import build_partner
from connectors.sql import SqlConnector
from dsrflow.datamap import (
    ColumnRef,
    DataMap,
    LogsSystem,
    ObjectsSystem,
    PartnerSystem,
    SqlSystem,
    load_datamap,
)
from dsrflow.deadlines import CalendarOverrides, Deadlines
from dsrflow.files import private_dir
from dsrflow.identities import Subject
from dsrflow.ledger import Ledger
from dsrflow.secret_blocks import read_secret_block
from dsrflow.settings import Settings, load_settings


@dataclass
class Runtime:
    settings: Settings
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _connectors: dict[str, Any] = field(default_factory=dict, repr=False)

    @cached_property
    def datamap(self) -> DataMap:
        return load_datamap(self.settings.datamap_path)

    @cached_property
    def deadlines(self) -> Deadlines:
        overrides = self.settings.calendar_overrides
        path = self.settings.path(overrides) if overrides else None
        return Deadlines(CalendarOverrides.load(path))

    def reload_calendars(self) -> Deadlines:
        """Read the calendar overrides file again: a notice typed in while this process
        runs (`dsrflow serve` runs for months) counts from the next deadline report on.
        The ledger computes with the new calendars too. Returns the calendars in use;
        raises ValueError or OSError for a file that cannot be used, and then the
        current calendars stay."""
        path = self.settings.calendar_overrides
        loaded = CalendarOverrides.load(self.settings.path(path) if path else None)
        if loaded != self.deadlines.overrides:
            fresh = Deadlines(loaded)
            self.__dict__["deadlines"] = fresh  # where cached_property keeps it
            if "ledger" in self.__dict__:
                self.ledger.deadlines = fresh
        return self.deadlines

    @cached_property
    def ledger(self) -> Ledger:
        ledger = Ledger(self.settings.resolved_ledger_url, self.settings.keyring(), self.deadlines)
        ledger.migrate()
        return ledger

    def connector(self, system: str) -> Connector:
        """The connector of a data system (SQL, objects, logs)."""
        built = self._get(system)
        if getattr(built, "kind", None) == "partner":
            raise TypeError(f"system {system} is a partner, not a data system")
        return cast(Connector, built)

    def partner(self, system: str) -> Partner:
        built = self._get(system)
        if getattr(built, "kind", None) != "partner":
            raise TypeError(f"system {system} is not a partner")
        return cast(Partner, built)

    def _get(self, system: str) -> Any:
        """One connector per system per process (reflection, clients: not free)."""
        with self._lock:
            if system not in self._connectors:
                self._connectors[system] = self._build(system)
            return self._connectors[system]

    def sql(self, system: str) -> SqlConnector:
        connector = self.connector(system)
        if not isinstance(connector, SqlConnector):
            raise TypeError(f"system {system} is not a SQL system")
        return connector

    def _build(self, name: str) -> Any:
        spec = self.datamap.systems[name]
        if isinstance(spec, SqlSystem):
            connector = SqlConnector(name, spec)
            if _same_sqlite_file(connector.engine.url, self.ledger.engine.url):
                # SQLite has one writer per file: the erasure could not record what it is
                # about to commit before committing, and a crash between would go uncounted.
                connector.engine.dispose()
                raise ConnectorConfigError(
                    f"systems.{name}.url: the ledger's own SQLite file; give the ledger a "
                    "file of its own (ledger_url)")
            return connector
        if isinstance(spec, ObjectsSystem):
            from connectors.objects import ObjectsConnector

            return ObjectsConnector(name, spec, keys_from=self._keys_from)
        if isinstance(spec, PartnerSystem):
            return build_partner(name, spec, base_dir=self.settings.base_dir,
                                 secret=_credentials(name, spec))
        if isinstance(spec, LogsSystem):
            from connectors.logs import LogsConnector

            # Checkpoints and copies of files being rewritten: the owner's only (0700).
            state_dir = private_dir(self.settings.state_path / name)
            return LogsConnector(name, spec, base_dir=self.settings.base_dir,
                                 state_dir=state_dir)
        raise TypeError(f"no connector for system {name}")  # pragma: no cover

    def _keys_from(self, subjects: Sequence[Subject], ref: ColumnRef) -> dict[str, list[str]]:
        values = self.sql(ref.system).column_values(subjects, ref.table, ref.column)
        return {rid: [str(v) for v in found] for rid, found in values.items()}

    def close(self) -> None:
        for connector in self._connectors.values():
            dispose: Any = getattr(connector, "dispose", None) or getattr(connector, "close", None)
            if dispose is not None:
                dispose()
        self._connectors.clear()
        if "ledger" in self.__dict__:
            self.ledger.dispose()


def _credentials(name: str, spec: PartnerSystem) -> str | None:
    """A partner's token or signing secret from its Prefect Secret block, if it names one
    (else its protocol reads `credentials_env`)."""
    if spec.credentials_block is None:
        return None
    return read_secret_block(spec.credentials_block, f"systems.{name}.credentials_block")


_current: Runtime | None = None
_current_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process's runtime, from `$DSRFLOW_CONFIG` (or ./dsrflow.yaml) on first use."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Runtime(load_settings())
        return _current


def set_runtime(runtime: Runtime | None) -> Runtime | None:
    """Install a runtime (the CLI and tests do); returns the previous one."""
    global _current
    with _current_lock:
        previous, _current = _current, runtime
        return previous


def _same_sqlite_file(a: URL, b: URL) -> bool:
    files = [u.database for u in (a, b) if u.get_backend_name() == "sqlite"
             and u.database not in (None, "", ":memory:")]
    return len(files) == 2 and Path(files[0]).resolve() == Path(files[1]).resolve()
