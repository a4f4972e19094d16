"""billing: each item records the quantity its current period is charging for

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04

A change made without proration ("none") counts from the next period: the current period
goes on charging the quantity it charged before. A later prorated change credited the rest
of the period at the item's new quantity instead — time that was never charged (100 cameras
added with "none" and then removed credited 3,000.00 against nothing). Existing items start
with their current quantity, as the credits were computed until now.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('subscription_items') as batch:
        batch.add_column(sa.Column('billed_quantity', sa.Integer(), nullable=False, server_default='0'))
    op.execute("UPDATE subscription_items SET billed_quantity = quantity")


def downgrade() -> None:
    with op.batch_alter_table('subscription_items') as batch:
        batch.drop_column('billed_quantity')
