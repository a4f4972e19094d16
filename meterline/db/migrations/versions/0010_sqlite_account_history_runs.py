"""ledger: SQLite's account history in appended runs instead of two indexes on transfers

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

On SQLite `ix_transfers_debit` and `ix_transfers_credit` go: a batch of 1,000 transfers
over 10,000 accounts inserted 2,000 keys at random places in them, dirtying most of their
leaf pages (~6 MB of WAL per commit, about half of a batch's cost). The history moves to
`account_history`, written in bulk runs (see `AccountHistory` in meterline/ledger/models.py);
existing transfers become one run per tenant. PostgreSQL keeps its indexes; the two new
tables exist there only so both backends share one schema.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('account_history',
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('run', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('account_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'run', 'account_id', 'seq', name=op.f('pk_account_history')),
    sqlite_with_rowid=False,
    )
    op.create_table('account_history_runs',
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('last_seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'last_seq', name=op.f('pk_account_history_runs')),
    sqlite_with_rowid=False,
    )
    if op.get_bind().dialect.name != 'sqlite':
        return
    op.execute("INSERT INTO account_history_runs (tenant_id, last_seq) "
               "SELECT tenant_id, max(seq) FROM transfers GROUP BY tenant_id")
    op.execute(
        "INSERT INTO account_history (tenant_id, run, account_id, seq) "
        "SELECT t.tenant_id, r.last_seq, t.debit_account_id, t.seq "
        "FROM transfers t JOIN account_history_runs r ON r.tenant_id = t.tenant_id "
        "UNION "
        "SELECT t.tenant_id, r.last_seq, t.credit_account_id, t.seq "
        "FROM transfers t JOIN account_history_runs r ON r.tenant_id = t.tenant_id "
        "ORDER BY 1, 2, 3, 4")
    op.execute("DROP INDEX ix_transfers_debit")
    op.execute("DROP INDEX ix_transfers_credit")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        op.execute("CREATE INDEX ix_transfers_debit ON transfers (tenant_id, debit_account_id, seq)")
        op.execute("CREATE INDEX ix_transfers_credit ON transfers (tenant_id, credit_account_id, seq)")
    op.drop_table('account_history_runs')
    op.drop_table('account_history')
