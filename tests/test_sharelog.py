"""Share log, schema, export and compaction, each test on SQLite and on PostgreSQL."""
from __future__ import annotations

import asyncio
import csv
import io
import json
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, insert, select, text

from db_fixtures import (database_url, db, empty_database_url, make_record,  # noqa: F401
                         stored_share_keys)
from pool import db as pool_db
from pool.compaction import compact, compaction_cutoff
from pool.db import Database, SchemaOutdated, SchemaUnknown, head_revision
from pool.models import Base, Block, BlockStatus, Share, Worker, WorkerStatsMinute
from pool.share_export import export_shares
from pool.sharelog import ShareLog, ShareLogClosed, ShareRecord
from pool.spill import SpillCorrupt, SpillFile, SpillLocked, encode_line


async def started_log(db: Database, tmp_path: Path, **kwargs: float) -> ShareLog:
    sharelog = ShareLog(db, tmp_path / "spill" / "shares.spill", **kwargs)  # type: ignore[arg-type]
    await sharelog.start()
    return sharelog


async def test_every_field_is_stored_and_exported(db: Database, tmp_path: Path) -> None:
    records = [make_record(i, at=1_730_000_000.25 + i) for i in range(40)]
    records[7] = replace(records[7], is_block=True, nonce=0xFFFFFFFF, version=0xFFFFFFFF)
    sharelog = await started_log(db, tmp_path)
    await asyncio.gather(*(sharelog.append(r) for r in records))
    await sharelog.close()

    out = io.StringIO()
    assert await export_shares(db, out, None, None, "jsonl") == 40
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    for record, row in zip(records, exported):
        assert row["time"] == datetime.fromtimestamp(record.time, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ")
        assert ShareRecord(**{**row, "time": record.time}) == record


async def test_export_csv_window(db: Database, tmp_path: Path) -> None:
    base = datetime(2025, 3, 1, tzinfo=UTC)
    sharelog = await started_log(db, tmp_path)
    for i in range(10):
        await sharelog.append(make_record(i, at=(base + timedelta(minutes=i)).timestamp()))
    await sharelog.close()
    out = io.StringIO()
    count = await export_shares(db, out, base + timedelta(minutes=3), base + timedelta(minutes=6), "csv")
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert count == len(rows) == 3
    assert [r["time"] for r in rows] == [f"2025-03-01T00:0{m}:00.000000Z" for m in (3, 4, 5)]
    assert rows[0]["is_block"] == "false" and rows[0]["share_hash"] == make_record(3).share_hash
    with pytest.raises(ValueError, match="timezone"):
        await export_shares(db, out, datetime(2025, 1, 1), None, "csv")


async def test_replayed_share_is_stored_once(db: Database, tmp_path: Path) -> None:
    sharelog = await started_log(db, tmp_path)
    record = make_record(1)
    await sharelog.append(record)
    await sharelog.append(record)                                 # a replay after a crash
    await sharelog.append(replace(record, worker="acct1.other"))  # same hash, another worker
    await sharelog.close()
    keys = await stored_share_keys(db)
    assert sorted(keys) == sorted([(record.share_hash, record.worker),
                                   (record.share_hash, "acct1.other")])


INVALID_FIELDS = [
    ("share_hash", "zz"), ("share_hash", "00" * 31), ("job_id", "j" * 65), ("nonce", 2**32),
    ("height", -1), ("difficulty", 0.0), ("difficulty", float("nan")), ("extranonce2", "0g"),
    ("login", ""), ("peer", "p" * 65), ("version", -1), ("time", float("inf"))]


async def test_invalid_record_is_refused_before_it_is_queued(db: Database, tmp_path: Path) -> None:
    sharelog = await started_log(db, tmp_path)
    for field, value in INVALID_FIELDS:
        changes: dict[str, Any] = {field: value}
        with pytest.raises(ValueError):
            await sharelog.append(replace(make_record(1), **changes))
    assert sharelog.queue_depth == 0
    await sharelog.append(make_record(1))
    await sharelog.close()
    assert len(await stored_share_keys(db)) == 1
    with pytest.raises(ShareLogClosed):
        await sharelog.append(make_record(2))


async def test_concurrent_appends_share_commits(db: Database, tmp_path: Path) -> None:
    sharelog = await started_log(db, tmp_path, max_batch=500)
    await asyncio.gather(*(sharelog.append(make_record(i)) for i in range(3000)))
    assert sharelog.batches_committed <= 3000 / 50  # grouped, not one commit per share
    assert sharelog.last_commit_latency_s > 0 and sharelog.queue_depth == 0
    await sharelog.close()
    assert len(await stored_share_keys(db)) == 3000


async def test_spill_left_by_a_previous_run_is_replayed_at_start(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "spill" / "shares.spill"
    spill = SpillFile(path)
    spill.open()
    records = [make_record(i) for i in range(25)]
    for chunk in (records[:10], records[10:]):
        spill.append(encode_line([r.spill_row() for r in chunk]))
    spill.close()
    with open(path, "ab") as torn:  # a crash mid-write: never acknowledged, must be dropped
        torn.write(b"0badf00d [[1.0,")
    sharelog = ShareLog(db, path)
    await sharelog.start()
    assert not sharelog.spilling and sharelog.spill_bytes == 0 and path.stat().st_size == 0
    await sharelog.close()
    keys = await stored_share_keys(db)
    assert Counter(keys) == Counter((r.share_hash, r.worker) for r in records)


async def test_damage_inside_the_spill_file_is_refused_not_cut(tmp_path: Path) -> None:
    path = tmp_path / "s.spill"
    spill = SpillFile(path)
    spill.open()
    for i in range(3):
        spill.append(encode_line([make_record(i).spill_row()]))
    spill.close()
    data = bytearray(path.read_bytes())
    data[data.index(b"\n") + 20] ^= 0x01  # a flipped bit in the second line
    path.write_bytes(bytes(data))
    with pytest.raises(SpillCorrupt, match="damaged line"):
        SpillFile(path).open()
    assert path.read_bytes() == bytes(data)  # nothing cut


async def test_spill_file_is_locked_per_process(tmp_path: Path) -> None:
    first, second = SpillFile(tmp_path / "s.spill"), SpillFile(tmp_path / "s.spill")
    first.open()
    with pytest.raises(SpillLocked):
        second.open()
    first.close()
    second.open()
    second.close()


async def test_schema_check_names_the_upgrade_command(empty_database_url: str,  # noqa: F811
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    database = Database(empty_database_url)
    try:
        with pytest.raises(SchemaOutdated, match="kzpool db upgrade"):
            await database.check_schema()
        await database.upgrade()
        await database.check_schema()
        assert await database.current_revision() == head_revision()
        # This kzpool one release later: the database is now one revision behind.
        monkeypatch.setattr(pool_db, "head_revision", lambda: "9999_future")
        with pytest.raises(SchemaOutdated, match=r"revision \w+, this kzpool needs 9999_future; "
                                                 r"run `kzpool db upgrade`"):
            await database.check_schema()
        monkeypatch.undo()
        async with database.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_unknown'"))
        with pytest.raises(SchemaUnknown, match="ffff_unknown"):
            await database.check_schema()
    finally:
        await database.close()


STORAGE_TABLES = {"accounts", "workers", "shares", "blocks", "worker_stats_minute"}


def diff_table(op: object) -> str | None:
    """The table an Alembic autogenerate diff entry is about."""
    if isinstance(op, list):  # column modifications come as a list of tuples
        return diff_table(op[0])
    assert isinstance(op, tuple)
    for part in op[1:]:
        if isinstance(part, str) and part in STORAGE_TABLES:
            return part
        table = getattr(part, "table", None)
        if table is not None:
            return str(table.name)
        if getattr(part, "name", None) and hasattr(part, "columns") and hasattr(part, "schema"):
            return str(part.name)  # a Table
    return None


async def test_models_match_migrations(db: Database) -> None:
    """The storage models and the migrations agree (other packages' tables are theirs to check)."""
    async with db.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync_conn: compare_metadata(MigrationContext.configure(sync_conn), Base.metadata))
    assert [op for op in diff if diff_table(op) in STORAGE_TABLES or diff_table(op) is None] == []


async def test_compaction_folds_old_shares_into_minutes(db: Database, tmp_path: Path) -> None:
    base = datetime(2025, 3, 1, tzinfo=UTC)
    sharelog = await started_log(db, tmp_path)
    records = [make_record(i, worker=f"acct0.rig{i % 2}", is_block=(i == 5),
                           at=(base + timedelta(seconds=20 * i)).timestamp()) for i in range(12)]
    await asyncio.gather(*(sharelog.append(r) for r in records))
    cutoff = base + timedelta(minutes=3, seconds=30)  # floored to 3 minutes: shares 0-8 fold
    assert await compact(db, cutoff, chunk_rows=4) == 9
    assert await compact(db, cutoff) == 0
    # A share replayed late into an already folded minute adds to it.
    late = make_record(100, worker="acct0.rig0", at=(base + timedelta(seconds=5)).timestamp())
    await sharelog.append(late)
    await sharelog.close()
    assert await compact(db, cutoff) == 1
    async with db.engine.connect() as conn:
        left = (await conn.execute(select(func.count()).select_from(Share))).scalar_one()
        stats = (await conn.execute(select(Worker.name, WorkerStatsMinute.minute_s,
                                           WorkerStatsMinute.shares, WorkerStatsMinute.difficulty_sum,
                                           WorkerStatsMinute.blocks)
                                    .join(Worker, Worker.id == WorkerStatsMinute.worker_id))).all()
    assert left == 3
    expected: Counter[tuple[str, int]] = Counter()
    difficulty: defaultdict[tuple[str, int], float] = defaultdict(float)
    for r in records[:9] + [late]:
        key = (r.worker, int(r.time) // 60 * 60)
        expected[key] += 1
        difficulty[key] += r.difficulty
    assert {(w, m): n for w, m, n, _, _ in stats} == dict(expected)
    assert {(w, m): d for w, m, _, d, _ in stats} == dict(difficulty)
    assert sum(b for *_, b in stats) == 1


async def test_compaction_spares_shares_of_unsettled_blocks(db: Database) -> None:
    now = datetime(2025, 3, 10, tzinfo=UTC)
    found = now - timedelta(days=2)
    async with db.engine.begin() as conn:
        await conn.execute(insert(Block), [
            {"height": 1, "hash": "aa" * 32, "status": BlockStatus.ACCEPTED, "reward_sats": 312_500_000,
             "network_difficulty": 1e14, "found_at": found},
            {"height": 0, "hash": "bb" * 32, "status": BlockStatus.CONFIRMED, "reward_sats": 1,
             "network_difficulty": 1e14, "found_at": now - timedelta(days=9)}])
    assert await compaction_cutoff(db, timedelta(days=1), now) == found - timedelta(days=1)
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE blocks SET status = 'confirmed'"))
    assert await compaction_cutoff(db, timedelta(days=1), now) == now - timedelta(days=1)


async def test_compaction_races_inserts_without_losing_a_share(db: Database, tmp_path: Path) -> None:
    """Shares keep arriving (some into minutes being compacted) while compaction runs: each one
    ends up either still raw or counted in worker_stats_minute, never both, never neither."""
    base = datetime(2025, 3, 1, tzinfo=UTC)
    sharelog = await started_log(db, tmp_path)
    total = 3000

    async def arrive() -> None:
        for start in range(0, total, 100):
            await asyncio.gather(*(sharelog.append(make_record(i, at=(base + timedelta(
                seconds=i % 600)).timestamp())) for i in range(start, start + 100)))

    async def compact_repeatedly() -> int:
        folded = 0
        for _ in range(8):
            folded += await compact(db, base + timedelta(minutes=5), chunk_rows=300)
            await asyncio.sleep(0)
        return folded

    folded = (await asyncio.gather(arrive(), compact_repeatedly()))[1]
    await sharelog.close()
    folded += await compact(db, base + timedelta(minutes=5))
    async with db.engine.connect() as conn:
        raw = (await conn.execute(select(func.count()).select_from(Share))).scalar_one()
        counted = (await conn.execute(select(func.sum(WorkerStatsMinute.shares)))).scalar_one()
    assert counted == folded == total // 2 and raw + counted == total


def test_cli_upgrade_export_compact(empty_database_url: str, tmp_path: Path,  # noqa: F811
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from pool.db_cli import main
    url = ["--database-url", empty_database_url]
    assert main(["shares", "export", *url]) == 1
    assert "kzpool db upgrade" in capsys.readouterr().err
    assert main(["db", "upgrade", *url]) == 0
    assert main(["db", "check", *url]) == 0

    async def store() -> None:
        database = Database(empty_database_url)
        sharelog = await started_log(database, tmp_path)
        for i in range(5):
            await sharelog.append(make_record(i, at=1_700_000_000 + 3600 * i))
        await sharelog.close()
        await database.close()
    asyncio.run(store())

    out = tmp_path / "shares.csv"
    assert main(["shares", "export", "--format", "csv", "--output", str(out),
                 "--since", "2023-11-14T22:13:20Z", "--until", "1700010800", *url]) == 0
    assert len(out.read_text().splitlines()) == 1 + 3
    assert main(["shares", "compact", "--older-than", "1700007200", *url]) == 0
    assert "folded 2 shares" in capsys.readouterr().out
    assert main(["shares", "compact", "--keep", "1d", *url]) == 0
    assert "folded 3 shares" in capsys.readouterr().out


def _accepted_job_and_submission(is_block: bool):
    """A job, a submission and its hashing result, as the server hands an accepted share on."""
    from stratum.jobs import Job, ShareResult, Submission
    job = Job(job_id="1f", prevhash=bytes(32), coinb1=b"", coinb2=b"", merkle_branch=(),
              version=0x20000000, nbits=0x1703255B, ntime=1_730_000_000, clean_jobs=False,
              network_target=1 << 200, height=870_000)
    sub = Submission(extranonce1=bytes.fromhex("0badcafe"), extranonce2=bytes.fromhex("00000001"),
                     ntime=1_730_000_005, nonce=0xDEADBEEF, version=0x20002000, share_target=1)
    return job, sub, ShareResult(hash=bytes(range(32)), meets_share=True, meets_network=is_block)


def test_record_from_an_accepted_share() -> None:
    from pool.sharelog import peer_text, record_from_share
    from stratum.interfaces import Account, Peer
    job, sub, result = _accepted_job_and_submission(is_block=False)
    record = record_from_share(Account("alice", "alice.rig1"), Peer("198.51.100.7", 40001), "1f",
                               job, sub, 65536.0, result)
    assert (record.login, record.worker, record.height, record.peer) == (
        "alice", "alice.rig1", 870_000, "198.51.100.7:40001")
    assert record.share_hash == bytes(range(32))[::-1].hex() and not record.is_block
    assert (record.extranonce1, record.extranonce2, record.nonce) == ("0badcafe", "00000001", 0xDEADBEEF)
    assert peer_text("2001:db8::7", 3333) == "[2001:db8::7]:3333"


async def test_background_checkpoint_keeps_the_wal_short(tmp_path):
    """With the automatic checkpoint off (no stall inside a share commit), the timer still moves
    the WAL into the database, and close() leaves it truncated."""
    import os
    from pool.db import Database
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/ckpt.sqlite3", background_checkpoint=True)
    await db.upgrade()
    db.start_checkpointer(interval_s=0.05)
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE filler (x BLOB)")
        for _ in range(200):
            await conn.exec_driver_sql("INSERT INTO filler VALUES (randomblob(4096))")
    async with db.engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 0
    await asyncio.sleep(0.3)
    async with db.engine.connect() as conn:
        busy, log_frames, checkpointed = (await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")).one()
    assert checkpointed == log_frames          # the timer had already copied every frame back
    await db.close()
    wal = f"{tmp_path}/ckpt.sqlite3-wal"
    assert not os.path.exists(wal) or os.path.getsize(wal) == 0


def test_row_from_share_equals_the_record_path_and_survives_the_spill_form() -> None:
    """The server's direct rows are the rows the ShareRecord path gives, and a row's spill form
    replays to the same row."""
    from pool.share_rows import row_from_share, share_row, spill_row_of
    from pool.sharelog import ShareRecord, record_from_share
    from stratum.interfaces import AcceptedShare, Account, Peer
    job, sub, result = _accepted_job_and_submission(is_block=True)
    for peer in (Peer("198.51.100.7", 40001), Peer("2001:db8::7", 3333)):
        share = AcceptedShare(Account("alice", "alice.rig1"), peer, "1f.2", job, sub, 65536.0, result)
        record = record_from_share(*share)
        time_us = round(record.time * 1_000_000)
        row = row_from_share(share, time_us)
        assert row == share_row(record)
        assert share_row(ShareRecord(*spill_row_of(row))) == row
    too_long = AcceptedShare(Account("alice", "w" * 300), Peer("198.51.100.7", 1), "1f", job, sub, 1.0, result)
    with pytest.raises(ValueError, match="worker"):
        row_from_share(too_long, 1)


async def test_time_key_migration_keeps_every_share_and_its_idempotency(empty_database_url: str) -> None:  # noqa: F811
    """0005 -> 0006 rebuilds the key on a table with shares: every row survives, a replayed share
    is still skipped, and the block share is found by hash through the partial index."""
    database = Database(empty_database_url)
    try:
        await database.upgrade("0005")
        async with database.engine.begin() as conn:
            await conn.execute(text("INSERT INTO accounts (login) VALUES ('alice')"))
            worker_id = (await conn.execute(text(
                "INSERT INTO workers (account_id, name) SELECT id, 'alice.rig' FROM accounts RETURNING id"))).scalar()
            await conn.execute(insert(Share.__table__), [
                {"share_hash": bytes([i]) * 32, "worker_id": worker_id, "time_us": 1_780_000_000_000_000 + i,
                 "job_id": "1f", "height": 900_000, "difficulty": 1.0, "is_block": i == 3,
                 "extranonce1": b"\x01\x02\x03\x04", "extranonce2": b"\x00" * 4, "ntime": 1_780_000_000,
                 "nonce": i, "version": 0x20000000, "peer": "198.51.100.7:4000"} for i in range(10)])
        await database.upgrade()
        async with database.engine.begin() as conn:
            assert (await conn.execute(select(func.count()).select_from(Share))).scalar() == 10
            replay = await conn.execute(text(   # the same share again, as a spill replay sends it
                "INSERT INTO shares (share_hash, worker_id, time_us, job_id, height, difficulty, is_block, "
                "extranonce1, extranonce2, ntime, nonce, version, peer) SELECT share_hash, worker_id, time_us, "
                "job_id, height, difficulty, is_block, extranonce1, extranonce2, ntime, nonce, version, peer "
                "FROM shares WHERE nonce = 5 ON CONFLICT DO NOTHING"))
            assert replay.rowcount == 0
        from payouts.share_windows import find_block_share
        async with database.engine.connect() as conn:
            found = await find_block_share(conn, (bytes([3]) * 32).hex())
            assert found is not None and found.time_us == 1_780_000_000_000_003
            assert await find_block_share(conn, (bytes([4]) * 32).hex()) is None   # not a block
        async with database.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync_conn: compare_metadata(MigrationContext.configure(sync_conn), Base.metadata))
            assert not [d for d in diff if "shares" in repr(d)], diff
    finally:
        await database.engine.dispose()
