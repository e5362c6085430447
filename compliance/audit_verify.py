"""Verification of the audit chain: from an export file or the live database, by the same rules.

`ChainVerifier` is fed records in file (or seq) order and stops at the first break, naming the
record: changed (its contents no longer give its hash), missing, reordered, inserted, a broken
link, a checkpoint with a bad signature or an unknown key, an unreadable line, a coinbase anchor
that contradicts the log, and (when every record must be signed) records no checkpoint covers.
To tell a dropped record from two swapped ones or an inserted one it looks one record ahead, so
a file of any length is verified in constant memory.
"""
from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .audit_chain import (CHECKPOINT_KIND, GENESIS_HASH, ChainHead, ChainRecord,
                          checkpoint_message, find_anchors, record_hash)
from .audit_keys import PublicKey

if TYPE_CHECKING:
    from pool.db import Database


class BreakKind(str, enum.Enum):
    CHANGED = "changed"
    MISSING = "missing"
    REORDERED = "reordered"
    INSERTED = "inserted"
    BROKEN_LINK = "broken_link"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    MALFORMED = "malformed"
    UNSIGNED = "unsigned"
    ANCHOR_MISMATCH = "anchor_mismatch"
    REWRITTEN = "rewritten"            # differs from the same record in a previous export
    TRUNCATED = "truncated"            # the database ends before a previous export did


@dataclass(frozen=True, slots=True)
class Break:
    kind: BreakKind
    seq: int | None        # the record the break is pinned on
    line: int | None       # its line in the export (None for the database)
    message: str


@dataclass(frozen=True, slots=True)
class BlockCoinbase:
    """A block's coinbase scriptSig, from a source independent of the log (a node, a file)."""
    block_hash: str
    height: int | None
    script_sig: bytes
    source: str


@dataclass(frozen=True, slots=True)
class AnchorCheck:
    block_hash: str
    height: int | None
    seq: int
    status: str            # "confirmed" | "mismatch" | "not_in_range"
    source: str            # "log" (claimed by a block_found record) or the independent source
    record_hash: str = ""  # the hash of record `seq` when it was in range


@dataclass(slots=True)
class VerifyReport:
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    signed_through: int = 0           # seq of the last checkpoint whose signature verified
    key_ids: set[str] = field(default_factory=set)
    problem: Break | None = None
    anchors: list[AnchorCheck] = field(default_factory=list)
    # The last record of a previous export: "matches", "not_in_range", or None when not given.
    previous: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def unsigned(self) -> int:
        """Records after the last valid checkpoint (the live tail, or a truncated export)."""
        if self.last_seq is None:
            return 0
        return self.last_seq - max(self.signed_through, (self.first_seq or 1) - 1)


@dataclass(frozen=True, slots=True)
class _Seen:
    record: ChainRecord
    line: int | None

    @property
    def where(self) -> str:
        return f"record {self.record.seq}" + (f" (line {self.line})" if self.line else "")


class ChainVerifier:
    def __init__(self, public_keys: Iterable[PublicKey],
                 coinbases: Iterable[BlockCoinbase] = (), previous: ChainHead | None = None) -> None:
        self._keys = {key.key_id: key for key in public_keys}
        self.report = VerifyReport()
        # What the auditor saw last time: the same seq must still carry the same hash.
        self._previous = previous
        self._prev: _Seen | None = None
        self._prev2: _Seen | None = None
        self._held: _Seen | None = None       # a record that broke the order, judged on the next
        self._anchors: dict[int, list[tuple[BlockCoinbase, bytes]]] = {}
        for block in coinbases:
            for seq, prefix in find_anchors(block.script_sig):
                self._anchors.setdefault(seq, []).append((block, prefix))

    @property
    def broken(self) -> bool:
        return self.report.problem is not None

    def _fail(self, kind: BreakKind, seen: _Seen | None, message: str) -> None:
        self._fail_at(kind, seen.record.seq if seen else None, seen.line if seen else None,
                      message)

    def _fail_at(self, kind: BreakKind, seq: int | None, line: int | None, message: str) -> None:
        if self.report.problem is None:
            self.report.problem = Break(kind, seq, line, message)

    def fail_line(self, line: int, message: str) -> None:
        self._fail_at(BreakKind.MALFORMED, None, line, f"line {line}: {message}")

    def feed(self, record: ChainRecord, line: int | None = None) -> bool:
        """Check one record; False once the chain is broken (stop feeding)."""
        seen = _Seen(record, line)
        if self._held is not None:
            self._judge_order(self._held, seen)
            return False
        prev = self._prev
        if prev is None:
            if record.seq == 1 and record.prev_hash != GENESIS_HASH:
                self._fail(BreakKind.BROKEN_LINK, seen, f"{seen.where} is the first record "
                           "but does not start from the genesis value (64 zeros)")
                return False
            self.report.first_seq = record.seq
        elif record.seq != prev.record.seq + 1 or record.prev_hash != prev.record.hash:
            self._held = seen
            return True
        self._accept(seen)
        return not self.broken

    def finish(self, *, require_signed: bool, expect_first: int | None = None,
               expect_last: int | None = None) -> VerifyReport:
        if self._held is not None and not self.broken:
            self._judge_order(self._held, None)
        report = self.report
        if self._previous is not None and report.previous is None:
            report.previous = "not_in_range"
        for seq, claims in sorted(self._anchors.items()):   # anchors no checked record matched
            report.anchors.extend(AnchorCheck(block.block_hash, block.height, seq, "not_in_range",
                                              block.source) for block, _ in claims)
        if not self.broken and expect_first is not None and report.first_seq != expect_first:
            self._fail_at(BreakKind.MISSING, expect_first, None, f"record {expect_first} missing: "
                          f"the chain should start there but starts at {report.first_seq}")
        if not self.broken and expect_last is not None and report.last_seq != expect_last:
            self._fail_at(BreakKind.MISSING, (report.last_seq or 0) + 1, None,
                          f"records missing at the end: the export header says it runs to record "
                          f"{expect_last} but its last record is {report.last_seq}")
        if not self.broken and require_signed and report.unsigned:
            first = report.last_seq - report.unsigned + 1 if report.last_seq else None
            self._fail_at(BreakKind.UNSIGNED, first, None, f"records {first}..{report.last_seq} "
                          "are not covered by any checkpoint signature (a truncated export, or "
                          "records added without the pool's key)")
        return report

    def _accept(self, seen: _Seen) -> None:
        record = seen.record
        if record_hash(record.seq, record.time, record.kind, record.payload_json,
                       record.prev_hash) != record.hash:
            self._fail(BreakKind.CHANGED, seen, f"{seen.where} was changed: its contents do not "
                       "give the hash it carries")
            return
        if record.kind == CHECKPOINT_KIND and not self._check_signature(seen):
            return
        for block, prefix in self._anchors.pop(record.seq & 0xFFFFFFFF, ()):
            status = "confirmed" if bytes.fromhex(record.hash).startswith(prefix) else "mismatch"
            self.report.anchors.append(AnchorCheck(block.block_hash, block.height, record.seq,
                                                   status, block.source, record.hash))
            if status == "mismatch":
                self._fail(BreakKind.ANCHOR_MISMATCH, seen, f"{seen.where} differs from what block "
                           f"{block.block_hash} anchored in the blockchain: the log was rewritten")
                return
        if self._previous is not None and record.seq == self._previous.seq:
            if record.hash != self._previous.hash:
                self._fail(BreakKind.REWRITTEN, seen, f"{seen.where} differs from the same record "
                           "in the previous export: the log was rewritten since")
                return
            self.report.previous = "matches"
        self._prev2, self._prev = self._prev, seen
        self.report.records += 1
        self.report.last_seq = record.seq

    def _check_signature(self, seen: _Seen) -> bool:
        record, report = seen.record, self.report
        since = f"records {report.signed_through + 1}..{record.seq - 1} are not vouched for"
        try:
            body = json.loads(record.payload_json)
            key_id, signature = str(body["key_id"]), bytes.fromhex(body["signature"])
            signed_seq, signed_hash = int(body["signed_seq"]), str(body["signed_hash"])
        except (ValueError, KeyError, TypeError):
            self._fail(BreakKind.BAD_SIGNATURE, seen, f"checkpoint {seen.where} is malformed")
            return False
        if signed_seq != record.seq - 1 or signed_hash != record.prev_hash:
            self._fail(BreakKind.BAD_SIGNATURE, seen, f"checkpoint {seen.where} signs record "
                       f"{signed_seq} {signed_hash[:16]}.., not the record before it; {since}")
            return False
        key = self._keys.get(key_id)
        if key is None:
            self._fail(BreakKind.UNKNOWN_KEY, seen, f"checkpoint {seen.where} is signed by key "
                       f"{key_id}, not by the given public key ({', '.join(self._keys)}); {since}")
            return False
        if not key.verify(checkpoint_message(signed_seq, signed_hash), signature):
            self._fail(BreakKind.BAD_SIGNATURE, seen, f"checkpoint {seen.where}: the signature "
                       f"does not verify with key {key_id}; {since}")
            return False
        report.checkpoints += 1
        report.signed_through = record.seq
        report.key_ids.add(key_id)
        return True

    def _judge_order(self, held: _Seen, after: _Seen | None) -> None:
        """`held` does not follow the previous record. Decide what happened, using the record
        after it (`after`) and the one before the previous (an insertion shows up one late)."""
        prev, prev2 = self._prev, self._prev2
        assert prev is not None
        x, expected = held.record, prev.record.seq + 1
        n = after.record if after else None
        if n is not None and n.seq == expected and n.prev_hash == prev.record.hash:
            if x.seq == expected + 1 and x.prev_hash == n.hash:
                self._fail(BreakKind.REORDERED, held, f"records {expected} and {x.seq} are in the "
                           f"wrong order: {held.where} comes before {after.where}")  # type: ignore[union-attr]
            else:
                self._fail(BreakKind.INSERTED, held, f"{held.where}, kind {x.kind!r}, was inserted: "
                           f"record {expected} follows record {prev.record.seq} without it")
        elif x.seq <= prev.record.seq and prev2 is not None and x.prev_hash == prev2.record.hash:
            self._fail(BreakKind.INSERTED, prev, f"{prev.where}, kind {prev.record.kind!r}, was "
                       f"inserted: {held.where} follows record {prev2.record.seq} without it")
        elif x.seq > expected and (n is None or n.seq == x.seq + 1):
            gap = f"record {expected}" if x.seq == expected + 1 else f"records {expected}..{x.seq - 1}"
            self._fail_at(BreakKind.MISSING, expected, held.line, f"{gap} missing: "
                          f"{held.where} comes right after record {prev.record.seq}")
        elif x.seq != expected:
            self._fail(BreakKind.REORDERED, held, f"{held.where} is out of place: record "
                       f"{expected} should follow record {prev.record.seq} here")
        else:
            self._fail(BreakKind.BROKEN_LINK, prev, f"{held.where} does not link to record "
                       f"{prev.record.seq}: record {prev.record.seq} was changed and its hash "
                       "recomputed, or replaced")


async def verify_database(db: Database, public_keys: Iterable[PublicKey],
                          coinbases: Iterable[BlockCoinbase] = (), *, require_signed: bool = False,
                          previous: ChainHead | None = None) -> VerifyReport:
    """The same checks on the live table, seq order. The unsigned tail is normal there (records
    since the last checkpoint) unless `require_signed`. The database holds the whole log, so it
    must reach at least as far as a previous export did."""
    from .audit_store import AuditStore
    store = AuditStore(db)
    verifier = ChainVerifier(public_keys, coinbases, previous)
    bounds = await store.seq_bounds()
    if bounds is not None:
        async for record in store.records(1, bounds[1]):
            if not verifier.feed(record):
                break
    report = verifier.finish(require_signed=require_signed, expect_first=1 if bounds else None)
    if report.ok and previous is not None and (report.last_seq or 0) < previous.seq:
        report.problem = Break(BreakKind.TRUNCATED, (report.last_seq or 0) + 1, None,
                               f"records {(report.last_seq or 0) + 1}..{previous.seq} missing: "
                               f"the log ends at record {report.last_seq} but a previous export "
                               f"reached record {previous.seq}; records were removed at the end")
    return report
