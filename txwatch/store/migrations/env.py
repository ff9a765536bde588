"""Alembic environment: the engine is handed in by txwatch.store.db (no alembic.ini needed)."""

from alembic import context

from txwatch.store.models import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    if connection.dialect.name == "postgresql":  # a migration may rightly run longer than any request's statement
        connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
