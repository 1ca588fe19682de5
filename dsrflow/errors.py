"""Error text that is safe to store, log, send to Prefect or print.

`safe_error` is the one function that turns an exception into text for the ledger
(`steps.error`, request reasons, the audit chain), for logs, for Prefect (task-run states and
the tracebacks Prefect logs) and for the terminal. It keeps an exception's own message only
when dsrflow wrote it knowing it carries no value:

- exceptions dsrflow raises with messages built from names, counts, dotted data-map paths
  and fixed text (`TRUSTED`: `StepFailed`, `LogsError`, `SchemaMismatch`, partner errors,
  ...): their first line;
- database errors: the driver's primary message where it names constraints, tables and
  columns and never a value (SQLite's messages; PostgreSQL's for the SQLSTATE classes in
  `PG_NAMED_CLASSES`), else the SQLSTATE or the driver's error number; never the statement
  or its parameters;
- `OSError`: its class and the system's text for its errno (never the file name);
- an S3 client error: its error code (never S3's message, which may quote a key).

Everything else (`ValueError("invalid literal for int() with base 10: '²'")`, a pydantic
`ValidationError`, a `KeyError`, a `UnicodeDecodeError`) becomes its class name and a fixed
hint: its message may quote input, so it is not kept anywhere.

`raises_safely` applies the same rule to what a Prefect task or flow raises: Prefect records
a raised exception's message in the run's state and logs its traceback (with every chained
cause), so a trusted exception goes on without its chain and any other is replaced by a
`SafeError` that carries `safe_error`'s text.
"""

from __future__ import annotations

import functools
import os
import re
import types
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError

MAX_LENGTH = 300
HINT = "message withheld: it may quote input"

# Exception classes whose messages dsrflow writes without any input value (checked where
# each is raised; tests/test_no_value_in_errors.py imports every name). A subclass of one
# is trusted too. Named, not imported: `dsrflow` must not import connectors or flows.
TRUSTED = frozenset({
    "dsrflow.errors.StepFailed",
    "dsrflow.errors.SafeError",
    "dsrflow.errors.NotOnRecord",
    "dsrflow.certificates.CertificateInvalid",
    "dsrflow.crypto.KeyMaterialError",
    "dsrflow.datamap.DataMapError",
    "dsrflow.deadlines.CalendarUnavailable",
    "dsrflow.deadlines.CalendarOverridesError",
    "entrypoints.demo.DemoError",
    "dsrflow.identities.IdentityError",
    "dsrflow.ledger.store.UnknownRequest",
    "dsrflow.ledger.store.ClosedRequest",
    "dsrflow.ledger.store.ExtensionRefused",
    "dsrflow.ledger.gates.GuardianMissing",
    "dsrflow.ledger.holds.HoldRefused",
    "dsrflow.model.InvalidTransition",
    "dsrflow.packages.PackageError",
    "dsrflow.report.filters.FilterError",
    "dsrflow.errors.ConfigError",
    "dsrflow.secret_blocks.SecretBlockError",
    "connectors.base.ConnectorConfigError",
    "connectors.http.Exhausted",
    "connectors.logs.errors.LogsError",
    "connectors.objects.ObjectsError",
    "connectors.objects.UnsafeKey",
    "connectors.partner.PartnerError",
    "connectors.sql.SchemaMismatch",
    "dsrflow.datamap_draft.DraftError",
    "deployments.serve.DeploymentConfigError",
    "flows.request.BatchIncomplete",
    "flows.retention.SweepIncomplete",
})

# PostgreSQL SQLSTATE classes whose primary messages name objects (constraints, relations,
# columns, roles, databases) and never a value: connection (08), integrity (23: the value
# is in the DETAIL, not kept), transaction state (25, 40), authorization (28), syntax and
# access (42: the statement's text is dsrflow's own, with bound parameters), resources (53,
# 54), prerequisite state (55), operator intervention (57), system (58), 0A, 3D, 3F.
# Class 22 (data exceptions: "invalid input syntax for type integer: \"²\""), P0 (a
# trigger's RAISE) and the rest can quote a value: only their SQLSTATE is kept.
PG_NAMED_CLASSES = frozenset(
    {"08", "0A", "23", "25", "28", "3D", "3F", "40", "42", "53", "54", "55", "57", "58"}
)
_S3_CODE = re.compile(r"[A-Za-z0-9.]{1,64}")


class StepFailed(RuntimeError):
    """Raised by a task in place of the original error, so Prefect never logs the values
    the original carried. Its message is built from `safe_error` results."""


class ConfigError(ValueError):
    """Settings, a key file or a secret that cannot be used (messages name the file and
    the setting, never a value). `dsrflow.settings` re-exports it."""


class NotOnRecord(LookupError):
    """What a command asked about is not in the ledger (named by request id and system)."""


class SafeError(RuntimeError):
    """Stands in for an exception whose message may carry input: its message is
    `safe_error` of the original (the original's class name and a fixed hint)."""


def safe_error(exc: BaseException, *, typed: bool = True, limit: int = MAX_LENGTH) -> str:
    """Text about `exc` that holds no input value: `<Type>: <message>` where the message
    is kept (see the module docstring), `<Type>: <fixed hint>` otherwise. `typed=False`
    leaves out the type of a trusted exception (for the terminal, where the message
    stands alone as it always has)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return _clip(_database_error(exc.orig), limit)
    if isinstance(exc, StatementError) and exc.orig is not None:
        # A value SQLAlchemy could not bind (a type error, an overflow): the kinds only.
        return _clip(f"{type(exc).__name__} ({type(exc.orig).__name__}): {HINT}", limit)
    if isinstance(exc, SQLAlchemyError):
        return _clip(type(exc).__name__, limit)
    name = type(exc).__name__
    if isinstance(exc, SafeError):  # made by this function already: "<Type>: <hint>"
        return _clip(str(exc), limit)
    if is_trusted(exc):
        text = _first_line(exc)
        if not typed:
            return _clip(text or name, limit)
        return _clip(f"{name}: {text}" if text else name, limit)
    if isinstance(exc, OSError) and exc.errno is not None:
        return _clip(f"{name}: {os.strerror(exc.errno)}", limit)
    code = _s3_code(exc)
    if code is not None:
        return _clip(f"{name}: {code}", limit)
    return _clip(f"{name}: {HINT}", limit)


def is_trusted(exc: BaseException) -> bool:
    """Whether `exc` is of a class whose messages dsrflow writes without values."""
    return any(f"{c.__module__}.{c.__qualname__}" in TRUSTED for c in type(exc).__mro__)


def safe_exception(exc: BaseException) -> BaseException:
    """What may be raised where Prefect (or a traceback) will show it: a trusted exception
    itself, cut from its chain (a cause's message is not trusted); any other, a
    `SafeError` with `safe_error`'s text."""
    if is_trusted(exc):
        exc.__cause__ = None
        exc.__context__ = None
        exc.__suppress_context__ = True
        return exc
    return SafeError(safe_error(exc))


F = TypeVar("F", bound=Callable[..., Any])


def raises_safely(fn: F) -> F:
    """Decorate a Prefect task or flow function: whatever it raises reaches Prefect as
    `safe_exception` makes it (`raise ... from None`: no chained cause is logged)."""
    convert = safe_exception

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            error = convert(exc)
        # Raised outside the handler: the original is not even kept as the context.
        raise error from None

    # The wrapper runs in `fn`'s module globals: Prefect resolves a flow's parameter
    # annotations (strings, under `from __future__ import annotations`) in the flow
    # function's `__globals__`, which must be the module that imported their types.
    rebuilt = types.FunctionType(
        wrapper.__code__, fn.__globals__, fn.__name__, wrapper.__defaults__,
        wrapper.__closure__,
    )
    return functools.update_wrapper(rebuilt, fn)  # type: ignore[return-value]


# -- helpers ----------------------------------------------------------------------------------
def _database_error(orig: BaseException) -> str:
    name = type(orig).__name__
    module = type(orig).__module__ or ""
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate:  # PostgreSQL (psycopg, psycopg2)
        diag = getattr(orig, "diag", None)
        primary = getattr(diag, "message_primary", None) if diag is not None else None
        if primary and str(sqlstate)[:2] in PG_NAMED_CLASSES:
            return f"{name}: {_one_line(str(primary))}"
        return f"{name}: SQLSTATE {sqlstate}"
    if module.startswith(("sqlite3", "pysqlite2")):
        # SQLite names tables, columns and constraints, never a bound value.
        return f"{name}: {_first_line(orig)}" if str(orig) else name
    if module.startswith(("psycopg", "psycopg2")) and name == "OperationalError":
        # No SQLSTATE: the client could not reach the server (host, port, database).
        return f"{name}: {_first_line(orig)}" if str(orig) else name
    # Any other driver (MySQL quotes the duplicate value in its message): the error number.
    number = orig.args[0] if orig.args and isinstance(orig.args[0], int) else None
    return f"{name}: error {number}" if number is not None else f"{name}: {HINT}"


def _s3_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    error = response.get("Error")
    code = error.get("Code") if isinstance(error, dict) else None
    if not isinstance(code, str | int):
        return None
    text = str(code)
    return text if _S3_CODE.fullmatch(text) else "unrecognised error code"


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return _one_line(text.splitlines()[0]) if text else ""


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text).strip()


def _clip(text: str, limit: int = MAX_LENGTH) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
