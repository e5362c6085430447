"""`kzpool audit export`: a contiguous run of the chain as JSON lines, ending on a checkpoint.

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

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pool.db import Database

from .audit_chain import canonical_json, format_time, normalise_payload
from .audit_events import ADMIN_COMMAND, admin_command
from .audit_keys import PublicKey, SigningKey
from .audit_store import AuditStore, PendingRecord
from .audit_verify import EXPORT_FORMAT

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
