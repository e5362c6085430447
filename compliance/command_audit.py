"""The audit log for an operator's command: the same signed chain the pool writes, from another process.

`command_audit(db, cfg)` loads the pool's audit key (`audit.key_file`; created in demo mode, as
the pool does, required in production), starts an AuditLog on the command's database and, on
exit, commits what was recorded with a final checkpoint, so the command's records are signed
before it returns. The chain is shared safely with running pools: every append locks, reads the
committed head and extends it (compliance/audit_store.py). payouts/cli.py does the same.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Callable

from pool.config import PoolConfig
from pool.db import Database

from .audit_keys import load_or_create_signing_key
from .audit_log import AuditLog

AuditSink = Callable[[str, dict[str, Any]], None]


@asynccontextmanager
async def command_audit(db: Database, cfg: PoolConfig) -> AsyncIterator[AuditLog]:
    key = load_or_create_signing_key(cfg.audit.key_file, create_if_missing=cfg.mode != "production")
    audit = AuditLog(db, key)
    await audit.start()
    try:
        yield audit
    finally:
        await audit.close()
