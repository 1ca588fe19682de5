"""Prefect tasks: thin wrappers over the pipeline's plain logic (`pipeline/`), which calls
the connectors and the core. Tasks take system names and request ids, never identities."""

# Registers how the pipeline reads the current Prefect run, for whatever task runs first.
from tasks import monitoring as _monitoring  # noqa: F401
