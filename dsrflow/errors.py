"""Error text that is safe to store and log.

Database drivers put bound values into their messages ("Key (email)=(...) already exists",
"[parameters: (...)]"); those values are personal data. Only the error's class and the
driver's primary message (which names constraints and columns, not values) are kept.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

MAX_LENGTH = 300


class StepFailed(RuntimeError):
    """Raised by a task in place of the original error, so Prefect never logs the values
    the original carried."""


def safe_error(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        orig = exc.orig
        diag = getattr(orig, "diag", None)
        primary = getattr(diag, "message_primary", None) if diag is not None else None
        text = primary if primary else str(orig).splitlines()[0] if str(orig) else ""
        return _clip(f"{type(orig).__name__}: {text}")
    if isinstance(exc, SQLAlchemyError):
        return _clip(type(exc).__name__)
    return _clip(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_LENGTH else text[: MAX_LENGTH - 1] + "…"
