"""Alembic environment: dsrflow always runs migrations on a connection it hands over."""

from alembic import context

from dsrflow.ledger.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
