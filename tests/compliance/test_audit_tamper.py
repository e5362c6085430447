"""What the auditor's check must catch, each named by record: one changed byte, a dropped
record, two swapped, one inserted, a checkpoint forged with another key, and a forger who
recomputes every hash after an edit. On an export file, and on the live database (both
backends)."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from audit_fixtures import (audit_db, audit_db_url, fill_log, index_of, payload,  # noqa: F401
                            read_lines, rechain, rehash, run_with_triggers_off, signing_key,
                            write_lines)
from compliance.audit_chain import canonical_json, checkpoint_message
from compliance.audit_export import export_log, last_record_of_export, verify_export
from compliance.audit_keys import SigningKey, generate_key_file
from compliance.audit_verify import BreakKind, VerifyReport, verify_database
from db_fixtures import sqlite_database_url  # noqa: F401
from pool.db import Database

RECORDS = 40


@pytest.fixture
async def export(sqlite_database_url: str, signing_key: SigningKey,  # noqa: F811
                 tmp_path: Path) -> AsyncIterator[Path]:
    db = Database(sqlite_database_url)
    await fill_log(db, signing_key, RECORDS, every=5)
    path = tmp_path / "export.jsonl"
    await export_log(db, path, signer=signing_key)
    await db.close()
    yield path


def check(path: Path, key: SigningKey, **kwargs: bool) -> VerifyReport:
    return verify_export(path, [key.public], **kwargs)


def assert_break(report: VerifyReport, kind: BreakKind, seq: int, line: int | None = None) -> None:
    assert report.problem is not None, "verify passed a tampered log"
    assert (report.problem.kind, report.problem.seq) == (kind, seq), report.problem
    if line is not None:
        assert report.problem.line == line, report.problem
    assert re.search(rf"\brecords? {seq}\b", report.problem.message), report.problem.message


def test_untouched_export_verifies(export: Path, signing_key: SigningKey) -> None:
    header, rows = read_lines(export)
    report = check(export, signing_key)
    assert report.ok, report.problem
    assert (report.records, report.first_seq, report.last_seq) == (len(rows), 1, header["last_seq"])
    assert report.unsigned == 0 and report.checkpoints >= RECORDS // 5
    assert rows[-1]["kind"] == "checkpoint"


def test_every_single_byte_change_in_a_payload_is_named(export: Path, signing_key: SigningKey,
                                                        tmp_path: Path) -> None:
    lines = export.read_bytes().splitlines(keepends=True)
    line_no = 1 + next(i for i, line in enumerate(lines[1:], 1)
                       if b'"kind":"test"' in line and b'"i":9,' in line)
    line = lines[line_no - 1]
    seq = read_lines(export)[1][line_no - 2]["seq"]
    start = line.index(b'"payload":') + len(b'"payload":')
    end = line.index(b'},"prev_hash"') + 1
    for at in range(start, end):
        for replacement in {line[at] ^ 0x01, ord("x")} - {line[at]}:
            changed = line[:at] + bytes([replacement]) + line[at + 1:]
            path = tmp_path / "changed.jsonl"
            path.write_bytes(b"".join(lines[:line_no - 1] + [changed] + lines[line_no:]))
            report = check(path, signing_key)
            assert not report.ok, f"byte {at} -> {replacement:#x} went unnoticed"
            if report.problem.kind is BreakKind.MALFORMED:     # the edit broke the JSON itself
                assert report.problem.line == line_no
            else:
                assert_break(report, BreakKind.CHANGED, seq, line_no)


@pytest.mark.parametrize("victim", ["first", "middle", "checkpoint", "last"])
def test_a_dropped_record_is_named(export: Path, signing_key: SigningKey, tmp_path: Path,
                                   victim: str) -> None:
    header, rows = read_lines(export)
    seq = {"first": 1, "middle": 13, "last": rows[-1]["seq"],
           "checkpoint": next(r["seq"] for r in rows[10:] if r["kind"] == "checkpoint")}[victim]
    del rows[index_of(rows, seq)]
    report = check(write_lines(tmp_path / "dropped.jsonl", header, rows), signing_key)
    assert_break(report, BreakKind.MISSING, seq)


def test_a_dropped_tail_without_header_is_unsigned(export: Path, signing_key: SigningKey,
                                                   tmp_path: Path) -> None:
    _, rows = read_lines(export)
    report = check(write_lines(tmp_path / "truncated.jsonl", None, rows[:-1]), signing_key)
    assert report.problem is not None and report.problem.kind is BreakKind.UNSIGNED
    assert check(tmp_path / "truncated.jsonl", signing_key, require_signed=False).ok


@pytest.mark.parametrize("first,second", [(20, 21), (10, 30)])
def test_two_swapped_records_are_named(export: Path, signing_key: SigningKey, tmp_path: Path,
                                       first: int, second: int) -> None:
    header, rows = read_lines(export)
    a, b = index_of(rows, first), index_of(rows, second)
    rows[a], rows[b] = rows[b], rows[a]
    report = check(write_lines(tmp_path / "swapped.jsonl", header, rows), signing_key)
    assert report.problem is not None and report.problem.kind is BreakKind.REORDERED
    assert report.problem.seq == second and report.problem.line == a + 2
    assert f"record {first}" in report.problem.message and f"record {second}" in report.problem.message


def test_an_inserted_record_is_named(export: Path, signing_key: SigningKey, tmp_path: Path) -> None:
    """The forger links the new record to record 20 and gives it seq 21, hash and all."""
    header, rows = read_lines(export)
    at = index_of(rows, 21)
    forged = rehash({**rows[at], "kind": "authorization",
                     "payload": {"decision": "accepted", "login": "ghost"}}, rows[at - 1]["hash"])
    rows.insert(at, forged)
    report = check(write_lines(tmp_path / "inserted.jsonl", header, rows), signing_key)
    assert_break(report, BreakKind.INSERTED, 21, at + 2)
    assert "'authorization'" in report.problem.message  # type: ignore[union-attr]


def test_an_inserted_copy_of_an_old_record_is_named(export: Path, signing_key: SigningKey,
                                                    tmp_path: Path) -> None:
    header, rows = read_lines(export)
    at = index_of(rows, 21)
    rows.insert(at, dict(rows[index_of(rows, 3)]))
    report = check(write_lines(tmp_path / "replayed.jsonl", header, rows), signing_key)
    assert_break(report, BreakKind.INSERTED, 3, at + 2)


def test_insert_with_every_later_record_renumbered_and_rehashed(export: Path, signing_key: SigningKey,
                                                               tmp_path: Path) -> None:
    """Without the key the forger cannot re-sign: the next checkpoint no longer fits."""
    header, rows = read_lines(export)
    at = index_of(rows, 21)
    rows.insert(at, {**rows[at], "payload": {"login": "ghost"}})
    for i in range(at, len(rows)):
        rows[i] = {**rows[i], "seq": rows[i]["seq"] + (i > at)}
    rows = rechain(rows, at)
    header["last_seq"] += 1
    report = check(write_lines(tmp_path / "renumbered.jsonl", header, rows), signing_key)
    first_checkpoint_after = next(r["seq"] for r in rows[at:] if r["kind"] == "checkpoint")
    assert_break(report, BreakKind.BAD_SIGNATURE, first_checkpoint_after)


def test_edit_with_recomputed_hashes_fails_at_the_next_checkpoint(
        export: Path, signing_key: SigningKey, tmp_path: Path) -> None:
    header, rows = read_lines(export)
    at = index_of(rows, 8)
    rows[at] = {**rows[at], "payload": {**rows[at]["payload"], "login": "someone-else"}}
    rows = rechain(rows, at)
    report = check(write_lines(tmp_path / "rewritten.jsonl", header, rows), signing_key)
    checkpoint = next(r["seq"] for r in rows[at:] if r["kind"] == "checkpoint")
    assert_break(report, BreakKind.BAD_SIGNATURE, checkpoint)
    assert "not vouched for" in report.problem.message  # type: ignore[union-attr]


@pytest.mark.parametrize("claimed_key", ["forger", "pool"])
def test_a_checkpoint_forged_with_another_key_is_named(export: Path, signing_key: SigningKey,
                                                       tmp_path: Path, claimed_key: str) -> None:
    header, rows = read_lines(export)
    forger = generate_key_file(tmp_path / "forger.pem")
    at = next(i for i, r in enumerate(rows) if r["kind"] == "checkpoint" and r["seq"] > 20)
    signed = rows[at]["payload"]
    signature = forger.sign(checkpoint_message(signed["signed_seq"], signed["signed_hash"]))
    key_id = forger.key_id if claimed_key == "forger" else signing_key.key_id
    rows[at] = {**rows[at], "payload": {**signed, "key_id": key_id, "signature": signature.hex()}}
    rows = rechain(rows, at)
    report = check(write_lines(tmp_path / "forged.jsonl", header, rows), signing_key)
    kind = BreakKind.UNKNOWN_KEY if claimed_key == "forger" else BreakKind.BAD_SIGNATURE
    assert_break(report, kind, rows[at]["seq"], at + 2)
    # The forger's own key vouches for the forged checkpoint but not for the pool's.
    assert not verify_export(write_lines(tmp_path / "forged2.jsonl", header, rows),
                             [forger.public]).ok


def test_the_wrong_public_key_fails_at_the_first_checkpoint(export: Path, tmp_path: Path) -> None:
    other = generate_key_file(tmp_path / "other.pem")
    report = check(export, other)
    first_checkpoint = next(r["seq"] for r in read_lines(export)[1] if r["kind"] == "checkpoint")
    assert_break(report, BreakKind.UNKNOWN_KEY, first_checkpoint)


def test_malformed_lines_and_duplicate_keys(export: Path, signing_key: SigningKey,
                                            tmp_path: Path) -> None:
    lines = export.read_text().splitlines()
    row = lines[5]
    duplicated = row.replace('"payload":{', '"payload":{"i":999,', 1)
    for bad in ("not json", "[1,2]", duplicated, row.replace('"seq":', '"seq_":')):
        path = tmp_path / "malformed.jsonl"
        path.write_text("\n".join(lines[:5] + [bad] + lines[6:]) + "\n")
        report = check(path, signing_key)
        assert report.problem is not None and report.problem.kind is BreakKind.MALFORMED
        assert report.problem.line == 6


def test_the_key_holder_cannot_rewrite_what_an_auditor_already_has(
        export: Path, signing_key: SigningKey, tmp_path: Path) -> None:
    """Everything re-signed with the pool's own key verifies alone, but not against the last
    record of the export the auditor kept from the previous audit."""
    header, rows = read_lines(export)
    at = index_of(rows, 8)
    rows[at] = {**rows[at], "payload": {**rows[at]["payload"], "login": "someone-else"}}
    rewritten = write_lines(tmp_path / "resigned.jsonl", header, rechain(rows, at, signing_key))
    assert check(rewritten, signing_key).ok
    previous = last_record_of_export(export)
    report = verify_export(rewritten, [signing_key.public], previous=previous)
    assert_break(report, BreakKind.REWRITTEN, previous.seq)
    assert verify_export(export, [signing_key.public], previous=previous).previous == "matches"


# -- the live database -----------------------------------------------------------------------

async def test_database_edits_are_named(audit_db: Database, signing_key: SigningKey) -> None:  # noqa: F811
    await fill_log(audit_db, signing_key, 30, every=5)
    assert (await verify_database(audit_db, [signing_key.public])).ok
    changed = canonical_json({**payload(3), "note": "record number 00004"})
    await run_with_triggers_off(audit_db, f"UPDATE audit_log SET payload = '{changed}' "
                                          "WHERE seq = (SELECT min(seq) FROM audit_log "
                                          "WHERE payload LIKE '%\"i\":3,%')")
    report = await verify_database(audit_db, [signing_key.public])
    assert report.problem is not None and report.problem.kind is BreakKind.CHANGED
    await run_with_triggers_off(audit_db, "DELETE FROM audit_log WHERE seq = 2")
    report = await verify_database(audit_db, [signing_key.public])
    assert_break(report, BreakKind.MISSING, 2)


async def test_database_shorter_than_a_previous_export_is_truncated(
        audit_db: Database, signing_key: SigningKey, tmp_path: Path) -> None:  # noqa: F811
    await fill_log(audit_db, signing_key, 20, every=5)
    await export_log(audit_db, tmp_path / "before.jsonl", signer=signing_key)
    previous = last_record_of_export(tmp_path / "before.jsonl")
    assert (await verify_database(audit_db, [signing_key.public], previous=previous)).ok
    await run_with_triggers_off(audit_db, f"DELETE FROM audit_log WHERE seq > {previous.seq - 4}")
    report = await verify_database(audit_db, [signing_key.public])
    assert report.ok            # a cut at the end leaves a valid, shorter chain...
    report = await verify_database(audit_db, [signing_key.public], previous=previous)
    assert_break(report, BreakKind.TRUNCATED, previous.seq - 3)   # ...that the auditor notices


async def test_database_refuses_update_and_delete(audit_db: Database,  # noqa: F811
                                                  signing_key: SigningKey) -> None:
    await fill_log(audit_db, signing_key, 3)
    for statement in ("UPDATE audit_log SET kind = 'x' WHERE seq = 1",
                      "DELETE FROM audit_log WHERE seq = 1"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with audit_db.engine.begin() as conn:
                await conn.exec_driver_sql(statement)
    if audit_db.dialect == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"):
            async with audit_db.engine.begin() as conn:
                await conn.exec_driver_sql("TRUNCATE audit_log")
    assert (await verify_database(audit_db, [signing_key.public])).ok
