"""Connectors: one module per kind of system. Plain Python, no Prefect: each can be driven
by a test on its own. All take a batch of subjects (see `connectors.base`)."""
