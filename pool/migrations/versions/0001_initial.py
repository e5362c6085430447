"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28

Accounts, workers, shares (the share log's table), blocks and per-worker per-minute statistics.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('login', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts')),
    sa.UniqueConstraint('login', name=op.f('uq_accounts_login'))
    )
    op.create_table('workers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_workers_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workers')),
    sa.UniqueConstraint('account_id', 'name', name=op.f('uq_workers_account_id_name'))
    )
    op.create_table('blocks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('status', sa.Enum('candidate', 'submitted', 'accepted', 'confirmed', 'orphaned', name='blockstatus', native_enum=False, length=16), nullable=False),
    sa.Column('reward_sats', sa.BigInteger(), nullable=False),
    sa.Column('finder_worker_id', sa.Integer(), nullable=True),
    sa.Column('network_difficulty', sa.Float(precision=53), nullable=False),
    sa.Column('found_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.ForeignKeyConstraint(['finder_worker_id'], ['workers.id'], name=op.f('fk_blocks_finder_worker_id_workers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blocks')),
    sa.UniqueConstraint('hash', name=op.f('uq_blocks_hash'))
    )
    with op.batch_alter_table('blocks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_blocks_height'), ['height'], unique=False)

    op.create_table('shares',
    sa.Column('share_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('worker_id', sa.Integer(), nullable=False),
    sa.Column('time_us', sa.BigInteger(), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('difficulty', sa.Float(precision=53), nullable=False),
    sa.Column('is_block', sa.Boolean(), nullable=False),
    sa.Column('extranonce1', sa.LargeBinary(length=32), nullable=False),
    sa.Column('extranonce2', sa.LargeBinary(length=32), nullable=False),
    sa.Column('ntime', sa.BigInteger(), nullable=False),
    sa.Column('nonce', sa.BigInteger(), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('peer', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['worker_id'], ['workers.id'], name=op.f('fk_shares_worker_id_workers')),
    sa.PrimaryKeyConstraint('share_hash', 'worker_id', name=op.f('pk_shares'))
    )
    with op.batch_alter_table('shares', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_shares_time_us'), ['time_us'], unique=False)

    op.create_table('worker_stats_minute',
    sa.Column('worker_id', sa.Integer(), nullable=False),
    sa.Column('minute_s', sa.BigInteger(), nullable=False),
    sa.Column('shares', sa.BigInteger(), nullable=False),
    sa.Column('difficulty_sum', sa.Float(precision=53), nullable=False),
    sa.Column('blocks', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['worker_id'], ['workers.id'], name=op.f('fk_worker_stats_minute_worker_id_workers')),
    sa.PrimaryKeyConstraint('worker_id', 'minute_s', name=op.f('pk_worker_stats_minute'))
    )


def downgrade() -> None:
    op.drop_table('worker_stats_minute')
    with op.batch_alter_table('shares', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shares_time_us'))

    op.drop_table('shares')
    with op.batch_alter_table('blocks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_blocks_height'))

    op.drop_table('blocks')
    op.drop_table('workers')
    op.drop_table('accounts')
