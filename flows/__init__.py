"""Prefect flows: the business processes."""
