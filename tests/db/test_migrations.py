"""Migrations: the models and the Alembic history never drift, and they run both ways."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from meterline.db import migrate
from meterline.db.engine import make_nullpool_engine
from meterline.db.registry import metadata


def test_models_match_migrations(db):
    with db.engine.connect() as conn:
        # include_object: PostgreSQL's monthly usage_events partitions have no model (see migrate.py).
        context = MigrationContext.configure(conn, opts={"include_object": migrate.include_object})
        diff = compare_metadata(context, metadata)
    assert diff == [], f"models and migrations differ; run an autogenerate: {diff}"


def test_downgrade_to_base_and_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url)
    migrate.downgrade(url, "base")
    engine = make_nullpool_engine(url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(url)
    assert "transfers" in inspect(engine).get_table_names()
    engine.dispose()


def test_sqlite_runs_wal_full_sync_and_foreign_keys(sqlite_url):
    from meterline.db.engine import Database

    db = Database(sqlite_url)
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    db.dispose()
