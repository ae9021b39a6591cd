"""Alembic environment. Run through `kanalvaxel migrate` (or `migrate.upgrade`), which passes the engine."""

from __future__ import annotations

from alembic import context

from kanalvaxel.adapters.persistence.tables import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `kanalvaxel migrate`, which provides the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
