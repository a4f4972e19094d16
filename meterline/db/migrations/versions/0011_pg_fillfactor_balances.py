"""ledger: PostgreSQL leaves free space in the pages of accounts and ledger_heads

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

Every committed batch rewrites each touched account's balances and its tenant's head. With
full pages (the default fillfactor of 100) PostgreSQL must put each new row version on
another page and add an entry for it to every index of the table — three on `accounts`.
With free space on the page the update is a heap-only tuple: same page, no index entries,
and the old version is pruned the next time the page is read, with or without autovacuum.
The balance columns carry no index, so every balance update qualifies. Pages written
before this migration keep their layout until the table is rewritten (VACUUM FULL).
SQLite has no such parameter; nothing changes there.
"""
from __future__ import annotations

from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

# Kept in step with the models (`postgresql_with` on Account and LedgerHead).
ACCOUNTS_FILLFACTOR = 70
HEADS_FILLFACTOR = 50


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute(f"ALTER TABLE accounts SET (fillfactor = {ACCOUNTS_FILLFACTOR})")
    op.execute(f"ALTER TABLE ledger_heads SET (fillfactor = {HEADS_FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("ALTER TABLE accounts RESET (fillfactor)")
    op.execute("ALTER TABLE ledger_heads RESET (fillfactor)")
