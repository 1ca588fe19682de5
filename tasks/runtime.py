"""What a running process needs, built once from settings: the ledger, the data map and the
connectors. Flows and tasks receive request ids only and reach everything else through here,
so no identity ever travels as a Prefect parameter.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property

from connectors.sql import SqlConnector
from dsrflow.datamap import DataMap, load_datamap
from dsrflow.deadlines import CalendarOverrides, Deadlines
from dsrflow.ledger import Ledger
from dsrflow.settings import Settings, load_settings


@dataclass
class Runtime:
    settings: Settings
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _connectors: dict[str, SqlConnector] = field(default_factory=dict, repr=False)

    @cached_property
    def datamap(self) -> DataMap:
        return load_datamap(self.settings.datamap_path)

    @cached_property
    def deadlines(self) -> Deadlines:
        overrides = self.settings.calendar_overrides
        path = self.settings.path(overrides) if overrides else None
        return Deadlines(CalendarOverrides.load(path))

    @cached_property
    def ledger(self) -> Ledger:
        ledger = Ledger(self.settings.resolved_ledger_url, self.settings.keyring(), self.deadlines)
        ledger.migrate()
        return ledger

    def connector(self, system: str) -> SqlConnector:
        """One connector per system per process (reflection is not free)."""
        with self._lock:
            if system not in self._connectors:
                spec = self.datamap.systems[system]
                self._connectors[system] = SqlConnector(system, spec)
            return self._connectors[system]

    def close(self) -> None:
        for connector in self._connectors.values():
            connector.dispose()
        self._connectors.clear()
        if "ledger" in self.__dict__:
            self.ledger.dispose()


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
