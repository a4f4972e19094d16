"""metering: SQLite's raw usage_events without a key, found for retention by usage_event_ranges

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-23

On SQLite the raw table loses its primary key (tenant_id, ts, event_id): nothing reads raw
events by key (queries use rollups, dedup uses `usage_event_ids`), and the key's index cost
about as much as the rows themselves on every ingest. Retention finds old rows through
`usage_event_ranges` instead: one row per ingested batch, its rowid range and earliest
timestamp. Existing rows get ranges of 1,000 rowids each. PostgreSQL keeps its partitioned
table as it is; `usage_event_ranges` exists there only so both backends share one schema.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0007'
branch_labels = None
depends_on = None

_COLUMNS = ("tenant_id, ts, event_id, licensee, device, subject, meter, quantity_micro, properties, "
            "received_at")
_DEFINITION = (
    "tenant_id VARCHAR(64) NOT NULL, ts BIGINT NOT NULL, event_id VARCHAR(128) NOT NULL, "
    "licensee VARCHAR(128) NOT NULL, device VARCHAR(128) NOT NULL, subject VARCHAR(128) NOT NULL, "
    "meter VARCHAR(64) NOT NULL, quantity_micro BIGINT NOT NULL, properties TEXT, received_at BIGINT NOT NULL"
)


def _rebuild_sqlite_events(key: str) -> None:
    op.execute(f"CREATE TABLE usage_events_rebuilt ({_DEFINITION}{key})")
    op.execute(f"INSERT INTO usage_events_rebuilt ({_COLUMNS}) SELECT {_COLUMNS} FROM usage_events ORDER BY rowid")
    op.execute("DROP TABLE usage_events")
    op.execute("ALTER TABLE usage_events_rebuilt RENAME TO usage_events")


def upgrade() -> None:
    op.create_table('usage_event_ranges',
    sa.Column('first_rowid', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('last_rowid', sa.BigInteger(), nullable=False),
    sa.Column('min_ts', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('first_rowid', name=op.f('pk_usage_event_ranges')),
    sqlite_with_rowid=False,
    )
    with op.batch_alter_table('usage_event_ranges', schema=None) as batch_op:
        batch_op.create_index('ix_usage_event_ranges_min_ts', ['min_ts'], unique=False)
    if op.get_bind().dialect.name == 'sqlite':
        _rebuild_sqlite_events("")
        op.execute("INSERT INTO usage_event_ranges (first_rowid, last_rowid, min_ts) "
                   "SELECT min(rowid), max(rowid), min(ts) FROM usage_events GROUP BY rowid / 1000")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        _rebuild_sqlite_events(", CONSTRAINT pk_usage_events PRIMARY KEY (tenant_id, ts, event_id)")
    with op.batch_alter_table('usage_event_ranges', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_event_ranges_min_ts')
    op.drop_table('usage_event_ranges')
