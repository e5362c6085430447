"""Fixtures and helpers for the audit log tests: migrated databases on both backends (from
tests/db_fixtures.py), a signing key, a filled log, and tools to tamper with an export the way a
forger would (edit lines, re-chain hashes after an edit, re-sign with another key)."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from compliance.audit_chain import canonical_json, checkpoint_message, record_hash
from compliance.audit_keys import SigningKey, generate_key_file
from compliance.audit_log import AuditLog
from db_fixtures import BACKENDS, TIMEOUT_FACTOR, migrated_database_url  # noqa: F401
from pool.db import Database


async def run_with_triggers_off(db: Database, *statements: str) -> None:
    """Execute `statements` on audit_log with its append-only triggers out of the way: what an
    operator with full database rights could do, and what the tests play as the tamperer."""
    async with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            await conn.exec_driver_sql("ALTER TABLE audit_log DISABLE TRIGGER USER")
        else:
            for action in ("update", "delete"):
                await conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS audit_log_no_{action}")
        for statement in statements:
            await conn.exec_driver_sql(statement)
        if db.dialect == "postgresql":
            await conn.exec_driver_sql("ALTER TABLE audit_log ENABLE TRIGGER USER")


@pytest.fixture(params=BACKENDS)
async def audit_db_url(request: pytest.FixtureRequest, tmp_path: Path,
                       tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A migrated database with an empty audit_log, on each backend. PostgreSQL's is shared
    across the run (db_fixtures), so its audit_log is emptied here."""
    async with migrated_database_url(request.param, tmp_path,
                                     tmp_path_factory.getbasetemp()) as url:
        if request.param == "postgresql":
            db = Database(url)
            await run_with_triggers_off(db, "DELETE FROM audit_log")
            await db.close()
        yield url


@pytest.fixture
async def audit_db(audit_db_url: str) -> AsyncIterator[Database]:
    db = Database(audit_db_url)
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
def signing_key(tmp_path: Path) -> SigningKey:
    return generate_key_file(tmp_path / "keys" / "audit-ed25519.pem")


def payload(i: int) -> dict[str, Any]:
    return {"i": i, "login": f"miner{i % 7}", "note": f"record number {i:05d}"}


async def fill_log(db: Database, key: SigningKey, count: int, *, every: int = 5,
                   **kwargs: Any) -> AuditLog:
    """`count` records in a closed log (so the tail is signed); returns the closed log."""
    log = AuditLog(db, key, checkpoint_every=every, checkpoint_interval_s=3600.0, **kwargs)
    await log.start()
    for i in range(count):
        log.record("test", payload(i))
    await log.close()
    return log


# -- an export as a forger sees it ------------------------------------------------------------

def read_lines(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    header, *rows = [json.loads(line) for line in path.read_text().splitlines()]
    return header, rows


def write_lines(path: Path, header: dict[str, Any] | None, rows: list[dict[str, Any]]) -> Path:
    lines = ([canonical_json(header)] if header is not None else []) + [canonical_json(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def rehash(row: dict[str, Any], prev_hash: str) -> dict[str, Any]:
    """`row` with `prev_hash` and a hash recomputed over its (possibly edited) contents."""
    row = {**row, "prev_hash": prev_hash}
    row["hash"] = record_hash(row["seq"], row["time"], row["kind"], canonical_json(row["payload"]),
                              prev_hash)
    return row


def rechain(rows: list[dict[str, Any]], start: int,
            key: SigningKey | None = None) -> list[dict[str, Any]]:
    """Recompute every hash from index `start` on: a forger covering an edit (needs no key).
    With `key`, checkpoints are signed again too: the pool's own key holder rewriting history."""
    out = rows[:start]
    for row in rows[start:]:
        prev = out[-1] if out else None
        if key is not None and row["kind"] == "checkpoint" and prev is not None:
            signature = key.sign(checkpoint_message(prev["seq"], prev["hash"]))
            row = {**row, "payload": {**row["payload"], "signed_hash": prev["hash"],
                                      "signed_seq": prev["seq"], "signature": signature.hex()}}
        out.append(rehash(row, prev["hash"] if prev else row["prev_hash"]))
    return out


def index_of(rows: list[dict[str, Any]], seq: int) -> int:
    return next(i for i, row in enumerate(rows) if row["seq"] == seq)


def timeout(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR
