"""Alembic environment for kzpool. Runs from pool.db.Database.upgrade(), which passes an open
connection in config.attributes; there is no alembic.ini, so it works from an installed wheel."""
from __future__ import annotations

from alembic import context

import compliance.audit_models  # noqa: F401  (registers the audit table on Base.metadata)
import compliance.models  # noqa: F401  (registers the registry tables on Base.metadata)
import compliance.power_models  # noqa: F401  (location, schedule, curtailment and energy tables)
import payouts.models  # noqa: F401  (registers the payout and ledger tables on Base.metadata)
from pool.models import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    """`--sql` mode: print the DDL for a DBA instead of running it."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes["connection"]
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
