"""PostgreSQL monthly partitions of `usage_events` (RANGE on `ts`, Unix ns).

Partitions are named ``usage_events_yYYYYmMM`` and created ahead (this month and
the next) by the migration and by the worker's ``metering.prune`` job. A DEFAULT
partition catches anything outside them (a late event for a month without a
partition, a far-future timestamp) so an insert never fails for want of one.
Retention drops whole months; rows in the default partition are deleted.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

from sqlalchemy import Connection, text

log = logging.getLogger(__name__)

PARENT = "usage_events"
DEFAULT = "usage_events_default"
NAME = re.compile(r"usage_events_y(\d{4})m(\d{2})")
_NS = 1_000_000_000


def month_start_ns(ns: int, offset: int = 0) -> int:
    """Start (Unix ns, UTC) of the month containing `ns`, moved by `offset` months."""
    dt = datetime.fromtimestamp(ns // _NS, tz=UTC)
    index = dt.year * 12 + dt.month - 1 + offset
    return int(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp()) * _NS


def partition_name(start_ns: int) -> str:
    dt = datetime.fromtimestamp(start_ns // _NS, tz=UTC)
    return f"usage_events_y{dt.year:04d}m{dt.month:02d}"


def is_partition(name: str) -> bool:
    return name == DEFAULT or NAME.fullmatch(name) is not None


def create_sql(start_ns: int) -> str:
    end = month_start_ns(start_ns, 1)
    return (f"CREATE TABLE IF NOT EXISTS {partition_name(start_ns)} PARTITION OF {PARENT} "
            f"FOR VALUES FROM ({start_ns}) TO ({end})")


def existing(conn: Connection) -> list[str]:
    return [r[0] for r in conn.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :parent AND p.relnamespace = "
        "current_schema()::regnamespace"
    ), {"parent": PARENT})]


def ensure(conn: Connection, now_ns: int, months_ahead: int = 1) -> int:
    """Create the partitions for this month and the next `months_ahead`; returns how many."""
    have = set(existing(conn))
    created = 0
    for offset in range(months_ahead + 1):
        start = month_start_ns(now_ns, offset)
        if partition_name(start) in have:
            continue
        try:
            with conn.begin_nested():
                conn.execute(text(create_sql(start)))
            created += 1
        except Exception as exc:  # rows for that month already sit in the default partition
            log.warning("could not create partition %s: %s", partition_name(start), exc)
    return created


def prune(conn: Connection, cutoff_ns: int) -> int:
    """Drop monthly partitions wholly before the cutoff; delete older rows from the default."""
    dropped = 0
    for name in existing(conn):
        m = NAME.fullmatch(name)
        if m is None:
            continue
        start = int(datetime(int(m.group(1)), int(m.group(2)), 1, tzinfo=UTC).timestamp()) * _NS
        if month_start_ns(start, 1) <= cutoff_ns:
            conn.execute(text(f"DROP TABLE {name}"))
            dropped += 1
    result = conn.execute(text(f"DELETE FROM {DEFAULT} WHERE ts < :c"), {"c": cutoff_ns})
    return dropped + max(result.rowcount or 0, 0)  # type: ignore[attr-defined]
