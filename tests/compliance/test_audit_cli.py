"""`kzpool audit keygen | pubkey | export | verify` through the command's own entry point, as the
operator and the auditor run them (one of them as a separate process)."""
from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from audit_fixtures import (audit_db_url, fill_log, payload, read_lines, signing_key,  # noqa: F401
                            timeout, write_lines)
from compliance import audit_cli
from compliance.audit_chain import ChainHead, anchor_tag, canonical_json
from compliance.audit_events import ADMIN_COMMAND, BLOCK_FOUND, block_found
from compliance.audit_keys import SigningKey
from compliance.audit_log import AuditLog
from compliance.audit_store import AuditStore, PendingRecord
from db_fixtures import sqlite_database_url  # noqa: F401
from pool.coinbase import build_script_sig
from pool.db import Database

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = audit_cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def arun(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """run() from an async test: the command runs its own event loop, so in a thread."""
    return await asyncio.to_thread(run, capsys, *argv)


@pytest.fixture
async def minute_log(sqlite_database_url: str, signing_key: SigningKey,  # noqa: F811
                     ) -> AsyncIterator[str]:
    """30 records, one a minute from 2026-01-01T00:00Z, checkpoint every 5, then 3 records
    not signed yet, as a running pool leaves its newest ones."""
    now = [START]
    db = Database(sqlite_database_url)
    log = AuditLog(db, signing_key, checkpoint_every=5, checkpoint_interval_s=1e9,
                   commit_interval_s=0.0, clock=lambda: now[0])
    await log.start()
    for i in range(30):
        log.record("test", payload(i))
        await log.flush()
        now[0] += 60
    await log.close()
    # Three more records that no checkpoint covers yet, as a running pool's newest ones.
    tail = [PendingRecord(round(now[0] * 1e6), "test", canonical_json(payload(i)))
            for i in range(30, 33)]
    async with db.engine.connect() as conn:
        await AuditStore(db).append(conn, tail, signing_key, checkpoint_every=10**9,
                                    checkpoint_interval_us=10**18, now_us=tail[0].time_us)
    await db.close()
    yield sqlite_database_url


def test_keygen_and_pubkey(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "var" / "audit.pem"
    code, out, _ = run(capsys, "keygen", "--key-file", str(key_file))
    assert code == 0 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public_hex = out.split("public key: ")[1].split()[0]
    assert "PRIVATE" not in out
    assert run(capsys, "pubkey", "--key-file", str(key_file))[1].strip() == public_hex
    assert "BEGIN PUBLIC KEY" in run(capsys, "pubkey", "--key-file", str(key_file), "--pem")[1]
    code, _, err = run(capsys, "keygen", "--key-file", str(key_file))
    assert code == 2 and "refusing to replace" in err


async def test_export_window_seals_and_verifies(minute_log: str, signing_key: SigningKey,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    key_file = str(tmp_path / "keys" / "audit-ed25519.pem")
    out = tmp_path / "window.jsonl"
    code, text, _ = await arun(
        capsys, "export", "--database-url", minute_log, "--key-file", key_file,
        "--from", "2026-01-01T00:10:00Z", "--to", "2026-01-01T00:20:00", "--out", str(out))
    assert code == 0, text
    header, rows = read_lines(out)
    tests = [r["payload"]["i"] for r in rows if r["kind"] == "test"]
    assert tests[0] == 10 and 20 in tests and rows[-1]["kind"] == "checkpoint"
    assert header["first_seq"] == rows[0]["seq"] > 1 and header["public_key"] == signing_key.public.hex
    code, text, _ = await arun(capsys, "verify", str(out), "--pubkey", signing_key.public.hex)
    assert code == 0 and "RESULT: OK" in text and f"starts at record {rows[0]['seq']}" in text

    full = tmp_path / "full.jsonl"
    await arun(capsys, "export", "--database-url", minute_log, "--key-file",
                            key_file, "--out", str(full))
    _, rows = read_lines(full)
    # The export sealed the open tail: an admin_command naming it, then a checkpoint.
    assert [r["kind"] for r in rows[-2:]] == [ADMIN_COMMAND, "checkpoint"]
    assert rows[-2]["payload"]["command"] == "audit export"
    code, text, _ = await arun(capsys, "verify", str(full), "--pubkey", signing_key.public.hex, "--json")
    report = json.loads(text)
    assert code == 0 and report["ok"] and report["unsigned"] == 0 and report["first_seq"] == 1


async def test_unsigned_tail_fails_a_file_unless_allowed(minute_log: str, signing_key: SigningKey,
                                                         tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "unsealed.jsonl"
    code, _, err = await arun(
        capsys, "export", "--database-url", minute_log, "--key-file",
        str(tmp_path / "no-such-key.pem"), "--out", str(out))
    assert code == 0 and "without sealing" in err
    code, text, _ = await arun(capsys, "verify", str(out), "--pubkey", signing_key.public.hex)
    assert code == 1 and "unsigned" in text
    code, text, _ = await arun(capsys, "verify", str(out), "--pubkey", signing_key.public.hex,
                        "--allow-unsigned-tail")
    assert code == 0 and "not signed yet" in text
    # The live database has an unsigned tail by nature: fine unless --require-signed.
    args = ("verify", "--db", "--database-url", minute_log, "--pubkey", signing_key.public.hex)
    assert (await arun(capsys, *args))[0] == 0
    assert (await arun(capsys, *args, "--require-signed"))[0] == 1


async def test_verify_names_the_broken_record_and_confirms_anchors(
        sqlite_database_url: str, signing_key: SigningKey, tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    db = Database(sqlite_database_url)
    await fill_log(db, signing_key, 12)
    await db.close()
    key_file = str(tmp_path / "keys" / "audit-ed25519.pem")
    out = tmp_path / "export.jsonl"
    await arun(capsys, "export", "--database-url", sqlite_database_url,
                            "--key-file", key_file, "--out", str(out))
    header, rows = read_lines(out)

    anchored = rows[6]
    layout = build_script_sig(850_000, 12, tag=b"/kzpool/",
                              extra_push=anchor_tag(ChainHead(anchored["seq"], anchored["hash"])))
    coinbases = tmp_path / "coinbases.jsonl"
    coinbases.write_text(json.dumps({"block_hash": "ab" * 32, "height": 850_000, "script_sig": (
        layout.before_extranonce + bytes(12) + layout.after_extranonce).hex()}) + "\n")
    code, text, _ = await arun(capsys, "verify", str(out), "--pubkey", signing_key.public.hex,
                        "--coinbases", str(coinbases))
    assert code == 0 and f"record {anchored['seq']} in block {'ab' * 32}" in text
    assert "CONFIRMED in the blockchain (file coinbases.jsonl)" in text

    rows[4]["payload"]["note"] = "edited"
    write_lines(out, header, rows)
    code, text, _ = await arun(capsys, "verify", str(out), "--pubkey", signing_key.public.hex)
    assert code == 1 and f"RESULT: BROKEN at record {rows[4]['seq']}: changed" in text


def test_usage_errors_exit_2(tmp_path: Path, signing_key: SigningKey,
                             capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.jsonl")
    for argv in (["verify", missing, "--pubkey", signing_key.public.hex],
                 ["verify", missing, "--pubkey", "not-a-key"],
                 ["verify", missing, "--db", "--pubkey", signing_key.public.hex],
                 ["pubkey", "--key-file", missing]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and err.startswith("kzpool audit: ") and "Traceback" not in err


async def test_verify_db_as_its_own_process(sqlite_database_url: str,  # noqa: F811
                                            signing_key: SigningKey) -> None:
    db = Database(sqlite_database_url)
    await fill_log(db, signing_key, 5)
    await db.close()
    result = subprocess.run(
        [sys.executable, "-m", "compliance.audit_cli", "verify", "--db", "--database-url",
         sqlite_database_url, "--pubkey", signing_key.public.hex],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout(60))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT: OK" in result.stdout


async def serve_blocks(blocks: dict[str, dict[str, object]]) -> asyncio.Server:
    """A Bitcoin node as far as `getblock <hash> 2` goes: an in-memory fake of the external node,
    HTTP/1.1 JSON-RPC with Core's reply shapes (error -5 for an unknown block)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        call = json.loads(await reader.readexactly(int(headers["content-length"])))
        block = blocks.get(call["params"][0]) if call["method"] == "getblock" else None
        reply = ({"result": block, "error": None, "id": call["id"]} if block else
                 {"result": None, "error": {"code": -5, "message": "Block not found"}, "id": call["id"]})
        body = json.dumps(reply).encode()
        writer.write(f"HTTP/1.1 {200 if block else 500} OK\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_verify_confirms_anchors_with_a_node(
        sqlite_database_url: str, signing_key: SigningKey, tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    db = Database(sqlite_database_url)
    log = AuditLog(db, signing_key)
    await log.start()
    for i in range(10):
        log.record("test", payload(i))
    await log.flush()
    anchored_seq = log.head()[0]
    layout = build_script_sig(850_001, 12, tag=b"/kzpool/", extra_push=log.anchor_push())
    script_sig = layout.before_extranonce + bytes(12) + layout.after_extranonce
    found, orphan = "11" * 32, "22" * 32
    for block_hash in (found, orphan):
        log.record(BLOCK_FOUND, block_found(850_001, block_hash, "demo.rig1", script_sig, []))
    await log.close()
    await db.close()
    out = tmp_path / "export.jsonl"
    await arun(capsys, "export", "--database-url", sqlite_database_url, "--key-file",
               str(tmp_path / "keys" / "audit-ed25519.pem"), "--out", str(out))

    node = await serve_blocks({found: {"height": 850_001, "confirmations": 3,
                                       "tx": [{"vin": [{"coinbase": script_sig.hex()}]}]}})
    port = node.sockets[0].getsockname()[1]
    code, text, _ = await arun(capsys, "verify", str(out), "--pubkey", signing_key.public.hex,
                               "--node", f"http://user:pass@127.0.0.1:{port}")
    node.close()
    assert code == 0, text
    assert (f"anchor: record {anchored_seq} in block {found} (height 850001): CONFIRMED in the "
            f"blockchain (node 127.0.0.1:{port})") in text
    assert f"the node does not have block {orphan}" in text
