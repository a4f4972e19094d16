"""identity: an API key's principal id is up to 128 characters, as the customer and wallet
owner ids it names are

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04

A customer key scopes its holder to the wallets and subscriptions of its principal id; with
64 characters here and 128 there, a customer whose id was longer than 64 could never be given
a key of its own. Widening a VARCHAR is a catalogue change on PostgreSQL (no rewrite); SQLite
does not enforce the length and copies the small table in batch mode.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys') as batch:
        batch.alter_column('principal_id', existing_type=sa.String(64), type_=sa.String(128), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table('api_keys') as batch:
        batch.alter_column('principal_id', existing_type=sa.String(128), type_=sa.String(64), existing_nullable=True)
