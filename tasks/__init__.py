"""Prefect tasks: thin wrappers over the step logic in `tasks.steps`, which calls the
connectors and the core. Tasks take system names and request ids, never identities."""
