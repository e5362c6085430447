"""licence registry

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Data centres and their IP ranges, licences of digital miners, and the history of licence changes
(compliance/models.py). IIN/BIN and names are stored encrypted with a keyed-hash index.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels = None
depends_on = None

STATUS = sa.Enum('active', 'suspended', 'revoked', 'expired', name='licencestatus', native_enum=False, length=16)


def upgrade() -> None:
    op.create_table('datacentres',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('region', sa.String(length=128), nullable=False),
    sa.Column('address', sa.String(length=512), nullable=False),
    sa.Column('owner_iin_bin_enc', sa.LargeBinary(), nullable=False),
    sa.Column('owner_iin_bin_index', sa.LargeBinary(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_datacentres'))
    )
    with op.batch_alter_table('datacentres', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_datacentres_owner_iin_bin_index'), ['owner_iin_bin_index'], unique=False)

    op.create_table('datacentre_networks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('datacentre_id', sa.String(length=64), nullable=False),
    sa.Column('cidr', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['datacentre_id'], ['datacentres.id'], name=op.f('fk_datacentre_networks_datacentre_id_datacentres')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_datacentre_networks')),
    sa.UniqueConstraint('cidr', name=op.f('uq_datacentre_networks_cidr'))
    )
    with op.batch_alter_table('datacentre_networks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_datacentre_networks_datacentre_id'), ['datacentre_id'], unique=False)

    op.create_table('licences',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('login', sa.String(length=64), nullable=False),
    sa.Column('iin_bin_enc', sa.LargeBinary(), nullable=False),
    sa.Column('iin_bin_index', sa.LargeBinary(length=32), nullable=False),
    sa.Column('name_enc', sa.LargeBinary(), nullable=False),
    sa.Column('licence_no', sa.String(length=64), nullable=False),
    sa.Column('subtype', sa.String(length=2), nullable=False),
    sa.Column('issued', sa.Date(), nullable=False),
    sa.Column('expires', sa.Date(), nullable=False),
    sa.Column('status', STATUS, nullable=False),
    sa.Column('suspended_until', sa.Date(), nullable=True),
    sa.Column('status_reason', sa.String(length=512), nullable=True),
    sa.Column('status_changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('change_seq', sa.BigInteger(), nullable=False),
    sa.Column('datacentre_id', sa.String(length=64), nullable=False),
    sa.Column('payout_address', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.ForeignKeyConstraint(['datacentre_id'], ['datacentres.id'], name=op.f('fk_licences_datacentre_id_datacentres')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_licences')),
    sa.UniqueConstraint('licence_no', name=op.f('uq_licences_licence_no')),
    sa.UniqueConstraint('login', name=op.f('uq_licences_login'))
    )
    with op.batch_alter_table('licences', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_licences_change_seq'), ['change_seq'], unique=False)
        batch_op.create_index(batch_op.f('ix_licences_datacentre_id'), ['datacentre_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_licences_iin_bin_index'), ['iin_bin_index'], unique=False)

    op.create_table('licence_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('licence_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('status', STATUS, nullable=False),
    sa.Column('suspended_until', sa.Date(), nullable=True),
    sa.Column('reason', sa.String(length=512), nullable=False),
    sa.ForeignKeyConstraint(['licence_id'], ['licences.id'], name=op.f('fk_licence_events_licence_id_licences')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_licence_events'))
    )
    with op.batch_alter_table('licence_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_licence_events_licence_id'), ['licence_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('licence_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_licence_events_licence_id'))
    op.drop_table('licence_events')
    with op.batch_alter_table('licences', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_licences_iin_bin_index'))
        batch_op.drop_index(batch_op.f('ix_licences_datacentre_id'))
        batch_op.drop_index(batch_op.f('ix_licences_change_seq'))
    op.drop_table('licences')
    with op.batch_alter_table('datacentre_networks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_datacentre_networks_datacentre_id'))
    op.drop_table('datacentre_networks')
    with op.batch_alter_table('datacentres', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_datacentres_owner_iin_bin_index'))
    op.drop_table('datacentres')
