"""shares keyed by time

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

The shares table's primary key becomes (time_us, worker_id, share_hash): new shares append at the
end of the key instead of landing on a random page each, which made every commit rewrite one
index page per share (measured in docs/storage.md). The time index is the key's prefix now and
goes; block shares, looked up by hash, get a partial index of their own. SQLite cannot change a
primary key in place, so there the table is rebuilt (Alembic's batch mode copies the rows).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels = None
depends_on = None

BLOCK_HASH_WHERE = {"sqlite_where": sa.text("is_block = 1"), "postgresql_where": sa.text("is_block")}


def upgrade() -> None:
    with op.batch_alter_table('shares', schema=None, recreate='auto') as batch_op:
        batch_op.drop_index('ix_shares_time_us')
        batch_op.drop_constraint('pk_shares', type_='primary')
        batch_op.create_primary_key('pk_shares', ['time_us', 'worker_id', 'share_hash'])
    op.create_index('ix_shares_block_hash', 'shares', ['share_hash'], unique=False, **BLOCK_HASH_WHERE)


def downgrade() -> None:
    op.drop_index('ix_shares_block_hash', table_name='shares', **BLOCK_HASH_WHERE)
    with op.batch_alter_table('shares', schema=None, recreate='auto') as batch_op:
        batch_op.drop_constraint('pk_shares', type_='primary')
        batch_op.create_primary_key('pk_shares', ['share_hash', 'worker_id'])
        batch_op.create_index('ix_shares_time_us', ['time_us'], unique=False)
