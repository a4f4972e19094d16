"""Alembic environment: the URL comes from the caller's Config (see meterline.db.migrate)."""

from __future__ import annotations

from alembic import context

from meterline.db.engine import make_nullpool_engine
from meterline.db.migrate import include_object
from meterline.db.registry import metadata

config = context.config


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                          include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is required"
    engine = make_nullpool_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True,
                          include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; use `meterline db upgrade`")
run_migrations()
