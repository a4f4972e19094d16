"""metering: meters, usage event ids (dedup), raw usage events, hourly and daily rollups

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22

On PostgreSQL `usage_events` is partitioned by RANGE on `ts` (Unix ns), one
partition per calendar month (UTC) plus a DEFAULT partition; this revision
creates last, this and next month's partitions and the worker keeps creating
them ahead. A partitioned table's primary key must include the partition key,
so the key is (tenant_id, ts, event_id) and dedup lives in the unpartitioned
`usage_event_ids`. On SQLite they are plain tables (WITHOUT ROWID except the raw one).
"""
from __future__ import annotations

import time
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def _month_start_ns(ns: int, offset: int) -> int:
    dt = datetime.fromtimestamp(ns // 10**9, tz=UTC)
    index = dt.year * 12 + dt.month - 1 + offset
    return int(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp()) * 10**9


def _partition_sql(start_ns: int) -> str:
    # Frozen copy of meterline.metering.partitions.create_sql (migrations don't import domains).
    dt = datetime.fromtimestamp(start_ns // 10**9, tz=UTC)
    end = _month_start_ns(start_ns, 1)
    return (f"CREATE TABLE IF NOT EXISTS usage_events_y{dt.year:04d}m{dt.month:02d} PARTITION OF usage_events "
            f"FOR VALUES FROM ({start_ns}) TO ({end})")


def upgrade() -> None:
    op.create_table('meters',
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('aggregation', sa.String(length=16), nullable=False),
    sa.Column('unit', sa.String(length=32), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('field', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.CheckConstraint("aggregation IN ('sum', 'count', 'max', 'unique_count', 'latest')",
                       name=op.f('ck_meters_aggregation')),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_meters'))
    )
    op.create_table('usage_event_ids',
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'event_id', name=op.f('pk_usage_event_ids')),
    sqlite_with_rowid=False,
    )
    op.create_table('usage_rollups',
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('meter', sa.String(length=64), nullable=False),
    sa.Column('licensee', sa.String(length=128), nullable=False),
    sa.Column('subject', sa.String(length=128), nullable=False),
    sa.Column('bucket_start', sa.BigInteger(), nullable=False),
    sa.Column('sum_micro', sa.BigInteger(), nullable=False),
    sa.Column('event_count', sa.BigInteger(), nullable=False),
    sa.Column('max_micro', sa.BigInteger(), nullable=False),
    sa.Column('latest_micro', sa.BigInteger(), nullable=False),
    sa.Column('latest_ts', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'meter', 'licensee', 'subject', 'bucket_start',
                            name=op.f('pk_usage_rollups')),
    sqlite_with_rowid=False,
    )
    with op.batch_alter_table('usage_rollups', schema=None) as batch_op:
        batch_op.create_index('ix_usage_rollups_period', ['tenant_id', 'meter', 'bucket_start'], unique=False)
    op.create_table('usage_rollups_daily',
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('meter', sa.String(length=64), nullable=False),
    sa.Column('licensee', sa.String(length=128), nullable=False),
    sa.Column('subject', sa.String(length=128), nullable=False),
    sa.Column('bucket_start', sa.BigInteger(), nullable=False),
    sa.Column('sum_micro', sa.BigInteger(), nullable=False),
    sa.Column('event_count', sa.BigInteger(), nullable=False),
    sa.Column('max_micro', sa.BigInteger(), nullable=False),
    sa.Column('latest_micro', sa.BigInteger(), nullable=False),
    sa.Column('latest_ts', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'meter', 'licensee', 'subject', 'bucket_start',
                            name=op.f('pk_usage_rollups_daily')),
    sqlite_with_rowid=False,
    )
    with op.batch_alter_table('usage_rollups_daily', schema=None) as batch_op:
        batch_op.create_index('ix_usage_rollups_daily_period', ['tenant_id', 'meter', 'bucket_start'], unique=False)
    op.create_table('usage_rollup_uniques',
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('meter', sa.String(length=64), nullable=False),
    sa.Column('licensee', sa.String(length=128), nullable=False),
    sa.Column('subject', sa.String(length=128), nullable=False),
    sa.Column('bucket_start', sa.BigInteger(), nullable=False),
    sa.Column('value', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'meter', 'licensee', 'subject', 'bucket_start', 'value',
                            name=op.f('pk_usage_rollup_uniques')),
    sqlite_with_rowid=False,
    )
    op.create_table('usage_rollup_uniques_daily',
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('meter', sa.String(length=64), nullable=False),
    sa.Column('licensee', sa.String(length=128), nullable=False),
    sa.Column('subject', sa.String(length=128), nullable=False),
    sa.Column('bucket_start', sa.BigInteger(), nullable=False),
    sa.Column('value', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'meter', 'licensee', 'subject', 'bucket_start', 'value',
                            name=op.f('pk_usage_rollup_uniques_daily')),
    sqlite_with_rowid=False,
    )
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(
            "CREATE TABLE usage_events ("
            "tenant_id VARCHAR(64) NOT NULL, ts BIGINT NOT NULL, event_id VARCHAR(128) NOT NULL, "
            "licensee VARCHAR(128) NOT NULL, device VARCHAR(128) NOT NULL, subject VARCHAR(128) NOT NULL, "
            "meter VARCHAR(64) NOT NULL, quantity_micro BIGINT NOT NULL, properties TEXT, "
            "received_at BIGINT NOT NULL, "
            "CONSTRAINT pk_usage_events PRIMARY KEY (tenant_id, ts, event_id)"
            ") PARTITION BY RANGE (ts)"
        )
        op.execute("CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT")
        now = time.time_ns()
        for offset in (-1, 0, 1):
            op.execute(_partition_sql(_month_start_ns(now, offset)))
    else:
        op.create_table('usage_events',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('ts', sa.BigInteger(), nullable=False),
        sa.Column('event_id', sa.String(length=128), nullable=False),
        sa.Column('licensee', sa.String(length=128), nullable=False),
        sa.Column('device', sa.String(length=128), nullable=False),
        sa.Column('subject', sa.String(length=128), nullable=False),
        sa.Column('meter', sa.String(length=64), nullable=False),
        sa.Column('quantity_micro', sa.BigInteger(), nullable=False),
        sa.Column('properties', sa.Text(), nullable=True),
        sa.Column('received_at', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'ts', 'event_id', name=op.f('pk_usage_events')),
        )


def downgrade() -> None:
    op.drop_table('usage_events')  # on PostgreSQL this drops every partition with it
    op.drop_table('usage_rollup_uniques_daily')
    op.drop_table('usage_rollup_uniques')
    op.drop_table('usage_rollups_daily')
    op.drop_table('usage_rollups')
    op.drop_table('usage_event_ids')
    op.drop_table('meters')
