"""Logs connector: JSON-lines and plain-text logs, local files (glob) or S3 prefixes, plain
or gzip, described by a `kind: logs` system of the data map. One module per layer, each
using only those before it: `matching` (the batch's identities and what a line mentions),
`prefilter` (the first, grep-fast stage), `rewrite` (files, temporary copies, in-place
rewrites, checkpoints), `connector` (the connector itself); `errors`.

The full specification: `docs/logs-erasure.md`.
"""

from connectors.logs.connector import LogsConnector
from connectors.logs.errors import LogsConfigError, LogsError

__all__ = ["LogsConfigError", "LogsConnector", "LogsError"]
