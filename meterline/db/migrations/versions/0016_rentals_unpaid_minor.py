"""rentals: a settled pay-as-you-go session records the cost its wallet could not pay

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-10

A session's settlement was capped at what its rolling holds held: usage past them (a power
jump between sparse samples, the power after the last sample, a minimum session longer than
the first slice, a worker outage) was never billed. It is now billed in full: the holds pay
first, the wallet pays the excess as far as its available balance goes, and the rest is
recorded here (cost = used_minor + unpaid_minor). NULL for prepaid contracts and for rentals
settled before this revision.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('rentals') as batch:
        batch.add_column(sa.Column('unpaid_minor', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('rentals') as batch:
        batch.drop_column('unpaid_minor')
