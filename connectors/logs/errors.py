"""What the logs connector raises: errors that name the system, the source, the file and
the operation, never a line or an identity."""

from __future__ import annotations

from connectors.base import ConnectorConfigError


class LogsError(RuntimeError):
    """A log file or object could not be read or rewritten. The message names the system,
    the source, the file and the operation, never a line or an identity."""


class LogsConfigError(ConnectorConfigError):
    """The data map's logs system cannot be used as configured."""
