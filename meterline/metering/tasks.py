"""Metering's background job.

``metering.prune``: keep PostgreSQL's monthly partitions of `usage_events` created
ahead (this month and the next), then drop raw events older than the retention
period (whole months on PostgreSQL, a range delete on SQLite). Rollups and the
dedup ids are never pruned. Safe to run from several workers: creating a partition
is IF NOT EXISTS and the deletes are idempotent.
"""

from __future__ import annotations

from meterline.clock import Clock
from meterline.db.engine import Database
from meterline.metering.service import metering_service

PRUNE = "metering.prune"
PRUNE_INTERVAL_S = 3600.0


def prune(db: Database, clock: Clock, retention_days: int) -> int:
    now = clock.now_ns()
    with db.session() as session:
        created = metering_service.maintain_partitions(session, now)
        return created + metering_service.prune(session, now, retention_days)
