"""location, electricity and curtailment

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

Location attestations of pool nodes and their shares per minute, day-ahead electricity schedules,
curtailment orders, estimated energy per login per hour (compliance/power_models.py), and an index
on worker_stats_minute.minute_s for scanning compacted work by time.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('curtailment_orders',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('target', sa.String(length=128), nullable=False),
    sa.Column('starts_us', sa.BigInteger(), nullable=False),
    sa.Column('ends_us', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.String(length=512), nullable=False),
    sa.Column('operator', sa.String(length=64), nullable=False),
    sa.Column('created_us', sa.BigInteger(), nullable=False),
    sa.Column('cancelled_us', sa.BigInteger(), nullable=True),
    sa.Column('cancel_reason', sa.String(length=512), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_curtailment_orders'))
    )
    with op.batch_alter_table('curtailment_orders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_curtailment_orders_ends_us'), ['ends_us'], unique=False)

    op.create_table('day_ahead_hours',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('target', sa.String(length=128), nullable=False),
    sa.Column('hour', sa.SmallInteger(), nullable=False),
    sa.Column('allowed_kw', sa.Float(precision=53), nullable=False),
    sa.Column('import_seq', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('day', 'scope', 'target', 'hour', name=op.f('pk_day_ahead_hours'))
    )
    with op.batch_alter_table('day_ahead_hours', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_day_ahead_hours_import_seq'), ['import_seq'], unique=False)

    op.create_table('energy_hours',
    sa.Column('login', sa.String(length=128), nullable=False),
    sa.Column('hour_s', sa.BigInteger(), nullable=False),
    sa.Column('datacentre_id', sa.String(length=64), nullable=False),
    sa.Column('shares', sa.BigInteger(), nullable=False),
    sa.Column('difficulty_sum', sa.Float(precision=53), nullable=False),
    sa.Column('j_per_th', sa.Float(precision=53), nullable=False),
    sa.Column('kwh', sa.Float(precision=53), nullable=False),
    sa.Column('outside_minutes', sa.Integer(), nullable=False),
    sa.Column('computed_us', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('login', 'hour_s', name=op.f('pk_energy_hours'))
    )
    with op.batch_alter_table('energy_hours', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_energy_hours_hour_s'), ['hour_s'], unique=False)

    op.create_table('location_attestations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.String(length=64), nullable=False),
    sa.Column('datacentre_id', sa.String(length=64), nullable=False),
    sa.Column('checked_us', sa.BigInteger(), nullable=False),
    sa.Column('verdict', sa.String(length=8), nullable=False),
    sa.Column('mode', sa.String(length=8), nullable=False),
    sa.Column('evidence', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_location_attestations'))
    )
    with op.batch_alter_table('location_attestations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_location_attestations_node_id_checked_us'), ['node_id', 'checked_us'], unique=False)

    op.create_table('node_share_minutes',
    sa.Column('node_id', sa.String(length=64), nullable=False),
    sa.Column('minute_s', sa.BigInteger(), nullable=False),
    sa.Column('shares', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('node_id', 'minute_s', name=op.f('pk_node_share_minutes'))
    )
    with op.batch_alter_table('worker_stats_minute', schema=None) as batch_op:
        batch_op.create_index('ix_worker_stats_minute_minute_s', ['minute_s'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('worker_stats_minute', schema=None) as batch_op:
        batch_op.drop_index('ix_worker_stats_minute_minute_s')

    op.drop_table('node_share_minutes')
    with op.batch_alter_table('location_attestations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_location_attestations_node_id_checked_us'))

    op.drop_table('location_attestations')
    with op.batch_alter_table('energy_hours', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_energy_hours_hour_s'))

    op.drop_table('energy_hours')
    with op.batch_alter_table('day_ahead_hours', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_day_ahead_hours_import_seq'))

    op.drop_table('day_ahead_hours')
    with op.batch_alter_table('curtailment_orders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_curtailment_orders_ends_us'))

    op.drop_table('curtailment_orders')
