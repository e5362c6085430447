"""licence events name their licence

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

A renewal (`kzpool licences renew`) replaces a login's licence number and dates, so every row of
`licence_events` now records the licence in force after its change: `licence_no`, `issued`,
`expires`. Rows written before this revision are filled from their licence, which is exact: no
licence could change its number or dates before renewals existed.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels = None
depends_on = None

COLUMNS = (('licence_no', sa.String(length=64)), ('issued', sa.Date()), ('expires', sa.Date()))


def upgrade() -> None:
    with op.batch_alter_table('licence_events', schema=None) as batch_op:
        for name, type_ in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    for name, _ in COLUMNS:
        op.execute(f"UPDATE licence_events SET {name} = "
                   f"(SELECT licences.{name} FROM licences WHERE licences.id = licence_events.licence_id)")
    with op.batch_alter_table('licence_events', schema=None) as batch_op:
        for name, type_ in COLUMNS:
            batch_op.alter_column(name, existing_type=type_, nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('licence_events', schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
