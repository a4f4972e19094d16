"""idempotency: a key is scoped to the caller (tenant and principal), not only the tenant

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04

Customers of one tenant choose their Idempotency-Keys independently. With the key scoped to
the tenant only, a customer sending a key another customer had used, with the same body,
was answered the other's stored response — their balance, and a withdrawal that never ran
for them (the Dante routes name the user by the key, not in the path or body). A caller
with a principal id (a customer, provider, operator) now has a key space of its own;
tenant-wide keys (an admin or service key without a principal id) share the tenant's, as
before. Existing rows keep the tenant-wide space ('').
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('idempotency_keys') as batch:
        batch.add_column(sa.Column('principal', sa.String(length=160), nullable=False, server_default=''))
        batch.drop_constraint('pk_idempotency_keys', type_='primary')
        batch.create_primary_key('pk_idempotency_keys', ['tenant_id', 'principal', 'key'])


def downgrade() -> None:
    # Keys of several principals may now share one name: keep the tenant-wide ones only.
    op.execute("DELETE FROM idempotency_keys WHERE principal <> ''")
    with op.batch_alter_table('idempotency_keys') as batch:
        batch.drop_constraint('pk_idempotency_keys', type_='primary')
        batch.create_primary_key('pk_idempotency_keys', ['tenant_id', 'key'])
        batch.drop_column('principal')
