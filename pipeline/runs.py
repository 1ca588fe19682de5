"""Which orchestrator run is doing the work, for what the ledger keeps of it (an erasure
certificate names the runs that did the work). The pipeline does not know Prefect: the task
layer registers how to read the current run (`tasks.monitoring`), and outside it there is
none."""

from __future__ import annotations

from collections.abc import Callable

RunReader = Callable[[], dict[str, str]]


def _no_run() -> dict[str, str]:
    return {}


_reader: RunReader = _no_run


def read_runs_with(reader: RunReader) -> None:
    """Set how the current run's ids are read (`{"flow_run_id": …, "task_run_id": …}`)."""
    global _reader
    _reader = reader


def current_run() -> dict[str, str]:
    """The ids of the runs this code works in; empty outside an orchestrator's run."""
    return _reader()
