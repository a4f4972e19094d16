"""Migration 0009 on SQLite: raw events keep every row, lose the key, and get rowid ranges."""

from __future__ import annotations

from sqlalchemy import text

from meterline.db import migrate
from meterline.db.engine import make_nullpool_engine
from meterline.metering.service import metering_service

NS = 1_000_000_000
DAY = 24 * 3600 * NS


def test_0009_moves_raw_events_and_covers_them_with_ranges(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url, "0007")
    engine = make_nullpool_engine(url)
    now = 1_760_000_000 * NS
    rows = [{"t": "t1", "ts": now - (i % 10) * DAY, "e": f"e{i}", "q": i} for i in range(2500)]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO usage_events (tenant_id, ts, event_id, licensee, device, subject, meter, "
                          "quantity_micro, properties, received_at) "
                          "VALUES (:t, :ts, :e, '', 'd', 'cam', 'm', :q, NULL, 0)"), rows)
    migrate.upgrade(url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT COUNT(*), SUM(quantity_micro) FROM usage_events")).one() == (
            2500, sum(range(2500)))
        sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'usage_events'")).scalar()
        assert "PRIMARY KEY" not in sql
        ranges = conn.execute(text("SELECT first_rowid, last_rowid, min_ts FROM usage_event_ranges")).all()
        assert len(ranges) == 3
        # every row lies in a range whose min_ts is not after its own ts
        uncovered = conn.execute(text(
            "SELECT COUNT(*) FROM usage_events e WHERE NOT EXISTS (SELECT 1 FROM usage_event_ranges r "
            "WHERE e.rowid BETWEEN r.first_rowid AND r.last_rowid AND r.min_ts <= e.ts)")).scalar()
        assert uncovered == 0
        assert metering_service.prune(conn, now, retention_days=5) == 1000  # i % 10 in 6..9: older than 5 days
    migrate.downgrade(url, "0007")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM usage_events")).scalar() == 1500
        sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'usage_events'")).scalar()
        assert "PRIMARY KEY (tenant_id, ts, event_id)" in sql
    engine.dispose()
