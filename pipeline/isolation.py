"""One request's bad input harms only that request. A system's work runs for the whole
batch in one call; when the call raises, the requests that make it fail are found by halving
the batch, so each fails alone with its reason and the rest of the batch goes on. A failure
of the system itself (a database down, a bucket refused, a file unreadable, a configuration
error) is every request's: it fails the batch at once, without a call per request.

Plain Python: the request's step functions (pipeline.steps) run their connector calls through
`run_isolated`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError

from connectors.base import ConnectorConfigError
from connectors.logs import LogsError
from connectors.objects import ObjectsError
from connectors.opendsr import PartnerUnavailable
from connectors.sql import SchemaMismatch
from dsrflow.errors import safe_error
from dsrflow.identities import Subject

T = TypeVar("T")

# What a request's identity cannot cause: the system (or the way to it) is at fault.
SYSTEMIC: tuple[type[BaseException], ...] = (
    OperationalError, InterfaceError, ProgrammingError, ConnectorConfigError, SchemaMismatch,
    LogsError, ObjectsError, PartnerUnavailable, ConnectionError, TimeoutError,
)


def run_isolated(
    work: Callable[[list[Subject]], dict[str, T]], subjects: Sequence[Subject]
) -> tuple[dict[str, T], dict[str, str]]:
    """`work` over the batch: (the outcomes of the requests it could serve, request id ->
    why it could not serve the others). Raises nothing."""
    batch = list(subjects)
    try:
        return work(batch), {}
    except Exception as exc:  # recorded per request by the caller
        if isinstance(exc, SYSTEMIC) or len(batch) == 1:
            return {}, dict.fromkeys((s.request_id for s in batch), safe_error(exc))
    middle = len(batch) // 2
    outcomes: dict[str, T] = {}
    failures: dict[str, str] = {}
    for half in (batch[:middle], batch[middle:]):
        done, failed = run_isolated(work, half)
        outcomes.update(done)
        failures.update(failed)
    return outcomes, failures
