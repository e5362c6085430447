"""AuditLog on SQLite and PostgreSQL: checkpoints by count and by time, restarts continuing the
chain, two writers never forking it, an outage that neither blocks record() nor breaks the chain,
what the pool records (authorizations, start with the config), and the coinbase anchor of a block
found on the simulated chain, confirmed by the verifier."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from audit_fixtures import (audit_db, audit_db_url, fill_log, payload, signing_key,  # noqa: F401
                            timeout)
from compliance.audit_chain import CHECKPOINT_KIND, ChainHead, anchor_tag
from compliance.audit_events import (AUTHORIZATION, BLOCK_FOUND, POOL_START, AuditedAuthorizer,
                                     block_found, pool_start, script_sig_of_block)
from compliance.audit_keys import SigningKey
from compliance.audit_log import AUDIT_GAP_KIND, AuditLog
from compliance.audit_verify import BlockCoinbase, verify_database
from cpu_miner import mine
from pool.allowlist_auth import AllowlistAuthorizer
from pool.blockbuild import assemble_block
from pool.config import load_config, redacted
from pool.db import Database
from pool.jobs import JobFeed
from pool.simnet import SimulatedChain
from sharelog_harness import sqlite_write_locked
from stratum.interfaces import Account, Peer
from tcp_proxy import TcpProxy


async def rows(db: Database) -> list[tuple[int, str, dict]]:
    async with db.engine.connect() as conn:
        result = await conn.execute(text("SELECT seq, kind, payload FROM audit_log ORDER BY seq"))
        return [(seq, kind, json.loads(body)) for seq, kind, body in result]


async def assert_intact(db: Database, key: SigningKey, *, all_signed: bool = True) -> None:
    report = await verify_database(db, [key.public], require_signed=all_signed)
    assert report.ok, report.problem


async def test_checkpoint_every_n_records_and_at_close(audit_db: Database,  # noqa: F811
                                                       signing_key: SigningKey) -> None:
    log = await fill_log(audit_db, signing_key, 53, every=10, max_batch=7)
    stored = await rows(audit_db)
    assert [body["i"] for _, kind, body in stored if kind == "test"] == list(range(53))
    run = 0
    for _, kind, _ in stored:
        run = 0 if kind == CHECKPOINT_KIND else run + 1
        assert run <= 10
    assert stored[-1][1] == CHECKPOINT_KIND                       # close() signs the tail
    assert log.head() == (stored[-1][0], log.head()[1]) and log.committed_total == 53
    await assert_intact(audit_db, signing_key)


async def test_checkpoint_after_the_interval_without_new_records(audit_db: Database,  # noqa: F811
                                                                 signing_key: SigningKey) -> None:
    log = AuditLog(audit_db, signing_key, checkpoint_every=1000, checkpoint_interval_s=0.3)
    await log.start()
    log.record("test", payload(0))
    await log.flush()            # the first batch of a new log is signed at once
    for i in range(1, 4):
        log.record("test", payload(i))
    await log.flush()
    assert (await rows(audit_db))[-1][1] == "test"
    deadline = time.monotonic() + timeout(5)
    while (await rows(audit_db))[-1][1] != CHECKPOINT_KIND:
        assert time.monotonic() < deadline, "no checkpoint after the interval"
        await asyncio.sleep(0.05)
    await assert_intact(audit_db, signing_key)
    await log.close()


async def test_records_arriving_together_share_a_transaction(audit_db: Database,  # noqa: F811
                                                            signing_key: SigningKey) -> None:
    """Group commit: the audit writer takes the write lock a few times a second, not once per
    record, however the records trickle in."""
    log = AuditLog(audit_db, signing_key, commit_interval_s=0.3)
    await log.start()
    log.record("test", payload(0))
    await log.flush()
    before = log.commits_total
    started = time.monotonic()
    for i in range(1, 41):
        log.record("test", payload(i))
        await asyncio.sleep(0.004)
    await log.flush()
    assert log.committed_total == 41
    assert log.commits_total - before <= 1 + (time.monotonic() - started) / 0.3
    await log.close()
    await assert_intact(audit_db, signing_key)


async def test_a_restart_continues_the_chain(audit_db: Database,  # noqa: F811
                                             signing_key: SigningKey) -> None:
    first = await fill_log(audit_db, signing_key, 12)
    second = AuditLog(audit_db, signing_key)
    await second.start()
    assert second.head() == first.head()
    assert second.anchor_push() == anchor_tag(ChainHead(first.head()[0], first.head()[1].hex()))
    second.record("test", payload(99))
    await second.close()
    assert second.head()[0] == first.head()[0] + 2                # the record and its checkpoint
    await assert_intact(audit_db, signing_key)


async def test_two_writers_never_fork_the_chain(audit_db_url: str,  # noqa: F811
                                                signing_key: SigningKey) -> None:
    dbs = [Database(audit_db_url), Database(audit_db_url)]
    logs = [AuditLog(db, signing_key, checkpoint_every=25, max_batch=3) for db in dbs]
    for log in logs:
        await log.start()
    for i in range(300):
        for n, log in enumerate(logs):
            log.record("test", {"writer": n, "i": i})
        if i % 20 == 0:
            await asyncio.sleep(0)       # let both writers run, interleaved
    await asyncio.gather(*(log.close() for log in logs))
    stored = await rows(dbs[0])
    for n in range(2):
        assert [b["i"] for _, k, b in stored if k == "test" and b["writer"] == n] == list(range(300))
    await assert_intact(dbs[0], signing_key)
    for db in dbs:
        await db.close()


async def test_an_outage_neither_blocks_record_nor_breaks_the_chain(
        audit_db_url: str, signing_key: SigningKey) -> None:  # noqa: F811
    proxy: TcpProxy | None = None
    url = audit_db_url
    if url.startswith("postgresql"):
        proxy = TcpProxy("127.0.0.1", 5432)
        await proxy.start()
        url = url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
    db = Database(url)
    log = AuditLog(db, signing_key, checkpoint_every=10, max_queue=50, commit_timeout_s=0.3,
                   retry_interval_s=0.05)
    await log.start()
    log.record("test", payload(-1))
    await log.flush()
    with (sqlite_write_locked(url) if proxy is None else contextlib.nullcontext()):
        if proxy is not None:
            await proxy.stop()
        started = time.perf_counter()
        for i in range(80):
            log.record("test", payload(i))
        assert time.perf_counter() - started < 0.05           # 80 calls, no waiting on the database
        await asyncio.sleep(0.6)                              # the writer fails and retries
        assert (log.queue_depth, log.dropped_total) == (50, 30)
        if proxy is not None:
            await proxy.start()
    await asyncio.wait_for(log.flush(), timeout(10))
    await log.close()
    stored = await rows(db)
    gaps = [body for _, kind, body in stored if kind == AUDIT_GAP_KIND]
    assert len(gaps) == 1 and gaps[0]["dropped"] == 30
    assert [b["i"] for _, k, b in stored if k == "test"] == list(range(-1, 50))
    await assert_intact(db, signing_key)
    await db.close()
    if proxy is not None:
        await proxy.stop()


def test_record_refuses_what_it_cannot_record(tmp_path: Path, signing_key: SigningKey) -> None:  # noqa: F811
    log = AuditLog(Database(f"sqlite+aiosqlite:///{tmp_path}/x.sqlite3"), signing_key)
    for kind in ("", CHECKPOINT_KIND, "k" * 65):
        with pytest.raises(ValueError):
            log.record(kind, {})
    with pytest.raises(TypeError):
        log.record("test", {"when": object()})
    assert log.queue_depth == 0


async def test_authorizations_and_start_are_recorded(audit_db: Database,  # noqa: F811
                                                     signing_key: SigningKey) -> None:
    log = AuditLog(audit_db, signing_key)
    await log.start()
    cfg = load_config(overrides=['database.url="postgresql+asyncpg://pool:s3cret@db/kzpool"',
                                 'node.rpc_password="rpc-s3cret"'])
    log.record(POOL_START, pool_start(redacted(cfg), version="test", key_id=signing_key.key_id))
    authorizer = AuditedAuthorizer(AllowlistAuthorizer.demo(), log)
    assert isinstance(await authorizer.authorize("demo.rig1", "pw-1", Peer("127.0.0.1", 4000)), Account)
    await authorizer.authorize("demo.rig1", "pw-2", Peer("203.0.113.9", 4001))
    await authorizer.authorize("mallory.x" + "y" * 1000, "pw-3", Peer("127.0.0.1", 4002))
    await log.close()
    stored = await rows(audit_db)
    everything = json.dumps(stored)
    assert "s3cret" not in everything and "pw-" not in everything
    start = next(body for _, kind, body in stored if kind == POOL_START)
    assert start["config"]["database"]["url"] == "postgresql+asyncpg://pool:***@db/kzpool"
    assert start["config"]["stratum"]["start_difficulty"] == "0.001"     # floats as strings
    decisions = [body for _, kind, body in stored if kind == AUTHORIZATION]
    assert [(d["decision"], d["reason"], d["login"], d["source"]) for d in decisions] == [
        ("accepted", None, "demo", "127.0.0.1:4000"),
        ("refused", "address_not_allowed", "demo", "203.0.113.9:4001"),
        ("refused", "unknown_login", "mallory", "127.0.0.1:4002")]
    assert len(decisions[2]["worker"]) == 256
    await assert_intact(audit_db, signing_key)


async def test_a_found_block_anchors_the_log(audit_db: Database,  # noqa: F811
                                             signing_key: SigningKey) -> None:
    """The job's coinbase carries the head; the block is valid (the simulated chain checks it
    fully); the verifier confirms the anchored record from the block's own coinbase."""
    await fill_log(audit_db, signing_key, 20)
    log = AuditLog(audit_db, signing_key)
    await log.start()
    chain = SimulatedChain(bits=0x207FFFFF)
    feed = JobFeed(chain, lambda job: 0, b"\x00\x14" + bytes(20), b"/kzpool/", 4, 8,
                   extra_push=log.anchor_push)
    job = feed.on_template(chain.template)
    anchored_seq = log.head()[0]
    en1, en2 = b"\x00\x00\x00\x01", bytes(8)
    nonce, result = mine(job, en1, en2, job.network_target)
    block = assemble_block(job, en1, en2, job.ntime, nonce, job.version)
    outcomes = await chain.submit_block(block)
    assert outcomes[0].accepted, outcomes
    script_sig = script_sig_of_block(block)
    log.record(BLOCK_FOUND, block_found(job.height, result.hash_display, "demo.rig1", script_sig,
                                        outcomes))
    await log.close()

    from_chain = BlockCoinbase(result.hash_display, job.height, script_sig, "simnet")
    report = await verify_database(audit_db, [signing_key.public], [from_chain])
    assert report.ok, report.problem
    assert [(a.seq, a.status, a.source) for a in report.anchors] == [
        (anchored_seq, "confirmed", "simnet")]
    # A coinbase claiming a different hash for that record is a rewritten log.
    forged = script_sig[:-9] + bytes(9)      # the anchor is the last push: its hash bytes zeroed
    report = await verify_database(audit_db, [signing_key.public],
                                   [BlockCoinbase("00" * 32, job.height, forged, "simnet")])
    assert not report.ok and report.problem.seq == anchored_seq  # type: ignore[union-attr]
