"""The export file: writing it (`kzpool audit export`) and reading it back for verification.

An export is a contiguous run of the chain as JSON lines, ending on a checkpoint.

Line 1 is a header (format, time of export, the seq range, the signing key's id and public key);
every other line is one record in its canonical JSON (audit_chain.ChainRecord.export_line), so
the file can be checked with nothing but the public key.
A time window selects the first record at or after --from and the last at or before --to; the
run is then extended to the next checkpoint, so every exported record is covered by a signature.
When the signing key is readable, the export first appends an admin_command record naming the
export and a checkpoint over it (one transaction, like any other append): the newest records
are then signed too, and the log itself says who exported what and when.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pool.db import Database

from .audit_chain import ChainHead, ChainRecord, canonical_json, format_time, normalise_payload
from .audit_events import ADMIN_COMMAND, admin_command
from .audit_keys import PublicKey, SigningKey
from .audit_store import AuditStore, PendingRecord
from .audit_verify import BlockCoinbase, ChainVerifier, VerifyReport

EXPORT_FORMAT = "kzpool-audit-export-v1"
RECORD_FIELDS = frozenset({"seq", "time", "kind", "payload", "prev_hash", "hash"})
MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    records: int
    first_seq: int | None
    last_seq: int | None
    sealed: bool         # a checkpoint was added over the newest records before exporting


async def seal(db: Database, signer: SigningKey, note: PendingRecord | None = None) -> int:
    """Append `note` (if any) and a checkpoint over the head; returns the new head's seq."""
    store = AuditStore(db)
    async with db.engine.connect() as conn:
        state = await store.append(conn, [note] if note else [], signer,
                                   checkpoint_every=2**62, checkpoint_interval_us=0,
                                   now_us=round(time.time() * MICROS), force_checkpoint=True)
    return state.head.seq


async def export_log(db: Database, out: str | Path, *, from_us: int | None = None,
                     to_us: int | None = None, signer: SigningKey | None = None,
                     public_key: PublicKey | None = None, operator: str = "cli") -> ExportResult:
    out = Path(out)
    sealed = False
    if signer is not None:
        arguments = {"from": None if from_us is None else format_time(from_us),
                     "to": None if to_us is None else format_time(to_us), "out": out.name}
        note = PendingRecord(round(time.time() * MICROS), ADMIN_COMMAND, canonical_json(
            normalise_payload(admin_command("audit export", arguments, operator))))
        await seal(db, signer, note)
        sealed = True
        public_key = signer.public
    store = AuditStore(db)
    bounds = await store.seq_bounds(from_us, to_us)
    first = last = None
    if bounds is not None:
        first, last = bounds
        last = await store.next_checkpoint(last) or last
    header = {"format": EXPORT_FORMAT, "exported_at": format_time(round(time.time() * MICROS)),
              "first_seq": first, "last_seq": last,
              "requested_from": None if from_us is None else format_time(from_us),
              "requested_to": None if to_us is None else format_time(to_us),
              "key_id": public_key.key_id if public_key else None,
              "public_key": public_key.hex if public_key else None}
    partial = out.with_name(out.name + ".partial")
    count = 0
    # Written aside and renamed: an interrupted export never looks like a complete one.
    with open(partial, "w", encoding="ascii", newline="\n") as sink:
        sink.write(canonical_json(header) + "\n")
        if first is not None and last is not None:
            async for record in store.records(first, last):
                sink.write(record.export_line() + "\n")
                count += 1
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(partial, out)
    return ExportResult(out, count, first, last, sealed)


def parse_export_line(text: str) -> ChainRecord | dict[str, Any]:
    """A record line as a ChainRecord, or the header line as a dict. ValueError says what is
    wrong. Duplicate keys are refused: a reader might show one value while the hash covers
    the other."""
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError(f"duplicate key in {keys}")
        return dict(pairs)

    obj = json.loads(text, object_pairs_hook=no_duplicates)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if obj.get("format") == EXPORT_FORMAT:
        return obj
    if set(obj) != RECORD_FIELDS:
        raise ValueError(f"expected the fields {sorted(RECORD_FIELDS)}, got {sorted(obj)}")
    seq, payload = obj["seq"], obj["payload"]
    if type(seq) is not int or seq < 1 or not isinstance(payload, dict):
        raise ValueError("seq must be a positive integer and payload an object")
    if not all(isinstance(obj[k], str) for k in ("time", "kind", "prev_hash", "hash")):
        raise ValueError("time, kind, prev_hash and hash must be strings")
    return ChainRecord(seq, obj["time"], obj["kind"], canonical_json(payload),
                       obj["prev_hash"], obj["hash"])


def read_export(path: str | Path) -> Iterator[tuple[int, ChainRecord | dict[str, Any] | str]]:
    """(line number, record | header | error text) for each non-empty line."""
    with open(path, encoding="utf-8") as lines:
        for number, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                yield number, parse_export_line(text)
            except ValueError as exc:
                yield number, f"unreadable: {exc}"


def verify_export(path: str | Path, public_keys: Iterable[PublicKey],
                  coinbases: Iterable[BlockCoinbase] = (), *, require_signed: bool = True,
                  previous: ChainHead | None = None) -> VerifyReport:
    verifier = ChainVerifier(public_keys, coinbases, previous)
    header: dict[str, Any] = {}
    for number, item in read_export(path):
        if isinstance(item, str):
            verifier.fail_line(number, item)
            break
        if isinstance(item, dict):
            if header or verifier.report.first_seq is not None:
                verifier.fail_line(number, "a second export header")
                break
            header = item
            continue
        if not verifier.feed(item, number):
            break
    return verifier.finish(require_signed=require_signed, expect_first=header.get("first_seq"),
                           expect_last=header.get("last_seq"))


def last_record_of_export(path: str | Path) -> ChainHead:
    """(seq, hash) of the last record of an earlier export, for `previous`."""
    last = None
    for _, item in read_export(path):
        if isinstance(item, str):
            raise ValueError(f"{path}: {item}")
        if isinstance(item, ChainRecord):
            last = item
    if last is None:
        raise ValueError(f"{path}: holds no records")
    return last.head
