"""Metering tables.

- `meters`: what can be measured and how it aggregates.
- `usage_event_ids`: the permanent dedup set, one row per (tenant, event id) ever
  accepted. It is the claim: an event is accepted only if its id row is inserted in
  the same transaction as the raw row and the rollup update, so a failed write never
  leaves an id claimed. It is never pruned ("deduplicated forever").
- `usage_events`: the raw events, kept for audit and re-aggregation. Retention prunes
  it — which is why dedup lives in `usage_event_ids`, not here. On PostgreSQL it is
  partitioned by month on `ts`, so its key (tenant, ts, event_id) starts with the
  timestamp after the tenant (a partitioned table's key must contain the partition
  key). On SQLite it has no key at all (see `UsageEvent`).
- `usage_event_ranges` (SQLite): per ingested batch, the rowid range its raw rows took
  and their earliest timestamp — a block-range index (PostgreSQL's BRIN, by hand) that
  retention finds old rows by. PostgreSQL leaves it empty: its partitions do that job.
- `usage_rollups` / `usage_rollups_daily`: one row per (tenant, meter, licensee,
  subject, hour | UTC day) with the sum, count, max and latest value of the events in
  it. Every usage query is answered from these rows, never from raw events: whole
  days of a period from the daily rows, the partial days at its edges (and
  `group_by=hour`) from the hourly ones — so a month reads ~31 rows per subject.
- `usage_rollup_uniques` / `…_daily`: the distinct values seen per bucket for
  `unique_count` meters, so a distinct count over any period is exact (a value seen in
  two hours counts once over the day).

Quantities are integer micro-units (6 decimal places: 1.5 → 1_500_000), exact in
Python and in both databases. Timestamps are Unix nanoseconds, like the ledger's.
`licensee` is a customer *inside* a Meterline tenant (BrinkByte's `tenant_id`); the
native API uses "".
"""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from meterline.db.base import Base

AGGREGATIONS = ("sum", "count", "max", "unique_count", "latest")


class Meter(Base):
    __tablename__ = "meters"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    aggregation: Mapped[str] = mapped_column(String(16))
    unit: Mapped[str] = mapped_column(String(32), default="")
    description: Mapped[str] = mapped_column(String(500), default="")
    # unique_count only: the event property whose distinct values are counted.
    field: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("aggregation IN ('sum', 'count', 'max', 'unique_count', 'latest')", name="aggregation"),
    )


class UsageEventId(Base):
    __tablename__ = "usage_event_ids"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)

    __table_args__ = {"sqlite_with_rowid": False}


class UsageEvent(Base):
    __tablename__ = "usage_events"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    licensee: Mapped[str] = mapped_column(String(128))
    device: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(128))
    meter: Mapped[str] = mapped_column(String(64))
    quantity_micro: Mapped[int] = mapped_column(BigInteger)
    properties: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON text
    received_at: Mapped[int] = mapped_column(BigInteger)
    # The key above is PostgreSQL's (and what the ORM maps by). On SQLite the table has none:
    # it is a plain rowid table, so writing an event is one append and nothing else. Nothing
    # reads raw events by key — queries use rollups, dedup uses `usage_event_ids` — and
    # retention finds old rows through `usage_event_ranges`. The key's index was about 40%
    # of SQLite's CPU for the raw rows (4.1 vs 2.2 ms per 1000 events, measured).


class UsageEventRange(Base):
    """SQLite: raw rows `first_rowid`..`last_rowid` (one ingested batch) have `ts >= min_ts`.

    Retention deletes `ts < cutoff` within the ranges whose `min_ts` is before the cutoff,
    then moves `min_ts` up to what is left (or drops the range when nothing is). Every raw
    row stays inside a range whose `min_ts` is not after its own `ts`, so nothing old is
    missed, and a batch is read again only when the cutoff reaches what is left of it.
    Ranges need not be exclusive (SQLite may hand out a pruned row's rowid again): every
    delete also says `ts < cutoff`, so a range can only ever remove rows that are old."""

    __tablename__ = "usage_event_ranges"

    first_rowid: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    last_rowid: Mapped[int] = mapped_column(BigInteger)
    min_ts: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_usage_event_ranges_min_ts", "min_ts"), {"sqlite_with_rowid": False})


class _RollupColumns:
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    meter: Mapped[str] = mapped_column(String(64), primary_key=True)
    licensee: Mapped[str] = mapped_column(String(128), primary_key=True)
    subject: Mapped[str] = mapped_column(String(128), primary_key=True)
    bucket_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # Unix ns, UTC
    sum_micro: Mapped[int] = mapped_column(BigInteger)
    event_count: Mapped[int] = mapped_column(BigInteger)
    max_micro: Mapped[int] = mapped_column(BigInteger)
    latest_micro: Mapped[int] = mapped_column(BigInteger)
    latest_ts: Mapped[int] = mapped_column(BigInteger)


class _UniqueColumns:
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    meter: Mapped[str] = mapped_column(String(64), primary_key=True)
    licensee: Mapped[str] = mapped_column(String(128), primary_key=True)
    subject: Mapped[str] = mapped_column(String(128), primary_key=True)
    bucket_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value: Mapped[str] = mapped_column(String(256), primary_key=True)


class UsageRollup(_RollupColumns, Base):
    """Hourly buckets."""

    __tablename__ = "usage_rollups"
    # The key serves one subject's range; this index serves a period across all subjects.
    __table_args__ = (Index("ix_usage_rollups_period", "tenant_id", "meter", "bucket_start"),
                      {"sqlite_with_rowid": False})


class UsageRollupDaily(_RollupColumns, Base):
    """Daily buckets (UTC) of the same figures: a month is 31 rows per subject, not 744."""

    __tablename__ = "usage_rollups_daily"
    __table_args__ = (Index("ix_usage_rollups_daily_period", "tenant_id", "meter", "bucket_start"),
                      {"sqlite_with_rowid": False})


class UsageRollupUnique(_UniqueColumns, Base):
    __tablename__ = "usage_rollup_uniques"
    __table_args__ = {"sqlite_with_rowid": False}


class UsageRollupUniqueDaily(_UniqueColumns, Base):
    __tablename__ = "usage_rollup_uniques_daily"
    __table_args__ = {"sqlite_with_rowid": False}
