"""PostgreSQL-specific storage tests, and the rule that keeps CI honest about them.

The shared behaviour (share log, schema check, export, compaction) runs on both databases in
test_sharelog.py and test_sharelog_crash.py; this file holds what only PostgreSQL has: several
pool processes writing to one database, server-side cursors, and the skip-or-fail rule."""
from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

import db_fixtures
from db_fixtures import make_record, postgres_database_url, stored_share_keys  # noqa: F401
from pool.db import Database
from pool.models import Account, Worker
from pool.share_export import STREAM_ROWS, export_shares
from pool.sharelog import ShareLog


@pytest.mark.parametrize("ci,outcome", [("true", pytest.fail.Exception),
                                        ("", pytest.skip.Exception)])
async def test_unreachable_postgres_fails_in_ci_and_skips_elsewhere(
        monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]) -> None:
    monkeypatch.setattr(db_fixtures, "PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:9/test")
    monkeypatch.setattr(db_fixtures, "_probe_result", [])
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome):
        await db_fixtures.require_postgres()


async def test_pool_processes_race_to_create_workers(postgres_database_url: str,  # noqa: F811
                                                     tmp_path: Path) -> None:
    """Several pool processes share one database: the first share of a new worker may arrive at
    all of them at once. Each must resolve the same worker id, and no share may be lost."""
    databases = [Database(postgres_database_url) for _ in range(3)]
    logs = [ShareLog(db, tmp_path / f"spill{n}") for n, db in enumerate(databases)]
    for sharelog in logs:
        await sharelog.start()
    records = [make_record(i, worker=f"racer.rig{i % 10}") for i in range(600)]
    await asyncio.gather(*(logs[i % 3].append(r) for i, r in enumerate(records)))
    for sharelog in logs:
        await sharelog.close()
        assert sharelog.spill_bytes == 0
    db = databases[0]
    async with db.engine.connect() as conn:
        workers = (await conn.execute(select(func.count()).select_from(Worker))).scalar_one()
        accounts = (await conn.execute(select(func.count()).select_from(Account))).scalar_one()
    assert (workers, accounts) == (10, 1)
    assert sorted(await stored_share_keys(db)) == sorted((r.share_hash, r.worker) for r in records)
    for database in databases:
        await database.close()


async def test_export_streams_past_one_cursor_fetch(postgres_database_url: str,  # noqa: F811
                                                    tmp_path: Path) -> None:
    db = Database(postgres_database_url)
    sharelog = ShareLog(db, tmp_path / "spill")
    await sharelog.start()
    count = STREAM_ROWS + 1234
    await asyncio.gather(*(sharelog.append(make_record(i, at=1_740_000_000 + i / 1000))
                           for i in range(count)))
    await sharelog.close()
    out = io.StringIO()
    assert await export_shares(db, out, None, None, "jsonl") == count
    lines = out.getvalue().splitlines()
    assert len(lines) == count and '"nonce"' in lines[-1]
    await db.close()
