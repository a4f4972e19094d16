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


def test_sqlite_account_history_migration_both_ways(tmp_path):
    """0010 moves SQLite's per-account history from two indexes on transfers to one run per
    tenant in account_history, and back."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    migrate.upgrade(url, "0009")
    engine = make_nullpool_engine(url)
    rows = [("t1", f"x{s}", s, "a", "b") for s in (1, 2, 3)] + [("t2", "y1", 1, "c", "a")]
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        for r in rows:
            conn.exec_driver_sql(
                "INSERT INTO transfers (tenant_id, id, seq, debit_account_id, credit_account_id, amount, asset, "
                "flags, timeout_s, code, timestamp, hash) VALUES (?, ?, ?, ?, ?, 1, 'USD', 0, 0, '', 1, '')", r)
    migrate.upgrade(url)
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("transfers")}
    assert not indexes & {"ix_transfers_debit", "ix_transfers_credit"}
    with engine.connect() as conn:
        runs = conn.exec_driver_sql("SELECT * FROM account_history_runs ORDER BY 1").all()
        history = conn.exec_driver_sql("SELECT * FROM account_history ORDER BY 1, 2, 3, 4").all()
    assert [tuple(r) for r in runs] == [("t1", 3), ("t2", 1)]
    assert [tuple(r) for r in history] == [
        ("t1", 3, "a", 1), ("t1", 3, "a", 2), ("t1", 3, "a", 3), ("t1", 3, "b", 1), ("t1", 3, "b", 2),
        ("t1", 3, "b", 3), ("t2", 1, "a", 1), ("t2", 1, "c", 1)]
    migrate.downgrade(url, "0009")
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("transfers")}
    assert {"ix_transfers_debit", "ix_transfers_credit"} <= indexes
    assert not {"account_history", "account_history_runs"} & set(inspect(engine).get_table_names())
    engine.dispose()


def test_postgres_balance_tables_leave_room_for_heap_only_updates(postgres_url):
    """0011: accounts and ledger_heads keep free space per page on PostgreSQL, so rewriting a
    balance or a head stays on its page without new index entries; the down step resets it."""
    engine = make_nullpool_engine(postgres_url)

    def options() -> dict[str, list[str] | None]:
        with engine.connect() as conn:
            return dict(conn.exec_driver_sql(
                "SELECT relname, reloptions FROM pg_class WHERE relname IN ('accounts', 'ledger_heads')").all())

    assert options() == {"accounts": ["fillfactor=70"], "ledger_heads": ["fillfactor=50"]}
    migrate.downgrade(postgres_url, "0010")
    try:
        assert options() == {"accounts": None, "ledger_heads": None}
    finally:
        migrate.upgrade(postgres_url)
    assert options()["accounts"] == ["fillfactor=70"]
    engine.dispose()
