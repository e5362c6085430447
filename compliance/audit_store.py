"""The audit_log table: extending the chain in one transaction, and reading it back in order.

A batch is appended in a single transaction that first takes the chain's write lock, then reads
the head (SELECT of the last record), chains the new records onto it, adds any checkpoint that is
due and inserts everything. The head is read inside the transaction, so a crash or a rollback
never leaves a record whose prev_hash points at something that is not there, and a restarted or
second pool process always continues from the committed head.
Lock: SQLite's BEGIN IMMEDIATE (one writer per file); PostgreSQL's transaction-scoped advisory
lock, so several pool processes on one database take turns. The primary key on seq is the last
line of defence: two writers that read the same head cannot both commit.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from pool.db import Database

from .audit_chain import (CHECKPOINT_KIND, GENESIS, ChainHead, ChainRecord, chain_next,
                          checkpoint_message, checkpoint_payload, format_time)
from .audit_keys import SigningKey

# pg_advisory_xact_lock key: b"kzaudit\0" as a signed 64-bit integer; unique within kzpool.
ADVISORY_LOCK_KEY = int.from_bytes(b"kzaudit\0", "big", signed=True)
READ_CHUNK = 5000

_HEAD = text("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
_LAST_CHECKPOINT = text("SELECT seq, time_us FROM audit_log WHERE kind = :kind "
                        "ORDER BY seq DESC LIMIT 1")
_INSERT = text("INSERT INTO audit_log (seq, time_us, kind, payload, prev_hash, hash) "
               "VALUES (:seq, :time_us, :kind, :payload, :prev_hash, :hash)")
_RANGE = text("SELECT seq, time_us, kind, payload, prev_hash, hash FROM audit_log "
              "WHERE seq >= :first AND seq <= :last ORDER BY seq LIMIT :limit")


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A record queued for the chain: its time and canonical payload are fixed when it is made."""
    time_us: int
    kind: str
    payload_json: str


@dataclass(frozen=True, slots=True)
class ChainState:
    """What the writer knows after a commit."""
    head: ChainHead
    checkpoint_seq: int         # 0 if there is none yet
    checkpoint_time_us: int     # 0 if there is none yet
    appended: int               # rows this transaction inserted, checkpoints included

    @property
    def unsigned(self) -> int:
        """Records after the last checkpoint."""
        return self.head.seq - self.checkpoint_seq


def _row_time_us(time_us: int | None) -> int:
    return 0 if time_us is None else int(time_us)


class AuditStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _lock(self, conn: AsyncConnection) -> None:
        if self.db.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": ADVISORY_LOCK_KEY})
        else:
            await self.db.begin_write(conn)

    async def append(self, conn: AsyncConnection, pending: Sequence[PendingRecord],
                     signer: SigningKey, *, checkpoint_every: int, checkpoint_interval_us: int,
                     now_us: int, force_checkpoint: bool = False) -> ChainState:
        """Chain `pending` onto the committed head and commit. A checkpoint follows every
        `checkpoint_every` records, and closes the batch if the last one is older than
        `checkpoint_interval_us` (or `force_checkpoint`) while records are unsigned."""
        try:
            await self._lock(conn)
            row = (await conn.execute(_HEAD)).first()
            head = ChainHead(int(row.seq), bytes(row.hash).hex()) if row else GENESIS
            row = (await conn.execute(_LAST_CHECKPOINT, {"kind": CHECKPOINT_KIND})).first()
            cp_seq, cp_time = (int(row.seq), _row_time_us(row.time_us)) if row else (0, 0)
            rows: list[dict[str, object]] = []

            def add(record: ChainRecord, time_us: int) -> None:
                rows.append({"seq": record.seq, "time_us": time_us, "kind": record.kind,
                             "payload": record.payload_json,
                             "prev_hash": bytes.fromhex(record.prev_hash),
                             "hash": bytes.fromhex(record.hash)})

            def checkpoint() -> ChainRecord:
                signature = signer.sign(checkpoint_message(head.seq, head.hash))
                record = chain_next(head, now_us, CHECKPOINT_KIND,
                                    checkpoint_payload(head, signer.key_id, signature))
                add(record, now_us)
                return record

            for item in pending:
                record = chain_next(head, item.time_us, item.kind, item.payload_json)
                add(record, item.time_us)
                head = record.head
                if head.seq - cp_seq >= checkpoint_every:
                    head = checkpoint().head
                    cp_seq, cp_time = head.seq, now_us
            overdue = now_us - cp_time >= checkpoint_interval_us or force_checkpoint
            if head.seq > cp_seq and overdue:
                head = checkpoint().head
                cp_seq, cp_time = head.seq, now_us
            if rows:
                await conn.execute(_INSERT, rows)
            await conn.commit()
        except BaseException:
            try:
                await conn.rollback()
            except Exception:  # a dead connection cannot roll back; the server discards the work
                pass
            raise
        return ChainState(head, cp_seq, cp_time, len(rows))

    async def read_state(self) -> ChainState:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(_HEAD)).first()
            head = ChainHead(int(row.seq), bytes(row.hash).hex()) if row else GENESIS
            row = (await conn.execute(_LAST_CHECKPOINT, {"kind": CHECKPOINT_KIND})).first()
        cp_seq, cp_time = (int(row.seq), _row_time_us(row.time_us)) if row else (0, 0)
        return ChainState(head, cp_seq, cp_time, 0)

    async def seq_bounds(self, from_us: int | None = None, to_us: int | None = None,
                         ) -> tuple[int, int] | None:
        """The first record at or after `from_us` and the last at or before `to_us` (seq order:
        an export is always a contiguous run of the chain, never a time-filtered subset)."""
        where, params = [], {}
        if from_us is not None:
            where.append("time_us >= :from_us")
            params["from_us"] = from_us
        if to_us is not None:
            where.append("time_us <= :to_us")
            params["to_us"] = to_us
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(
                text(f"SELECT min(seq) AS first, max(seq) AS last FROM audit_log {clause}"),
                params)).first()
        if row is None or row.first is None:
            return None
        return int(row.first), int(row.last)

    async def next_checkpoint(self, seq: int) -> int | None:
        """The seq of the first checkpoint at or after `seq`."""
        async with self.db.engine.connect() as conn:
            found = (await conn.execute(
                text("SELECT min(seq) FROM audit_log WHERE kind = :kind AND seq >= :seq"),
                {"kind": CHECKPOINT_KIND, "seq": seq})).scalar()
        return None if found is None else int(found)

    async def records(self, first: int, last: int) -> AsyncIterator[ChainRecord]:
        """Records first..last in seq order, read in chunks (memory stays flat on a long log).
        Rows are returned as stored: verification recomputes every hash itself."""
        while first <= last:
            async with self.db.engine.connect() as conn:
                rows = (await conn.execute(_RANGE, {"first": first, "last": last,
                                                    "limit": READ_CHUNK})).all()
            if not rows:
                return
            for row in rows:
                yield ChainRecord(int(row.seq), format_time(int(row.time_us)), row.kind,
                                  row.payload, bytes(row.prev_hash).hex(), bytes(row.hash).hex())
            first = int(rows[-1].seq) + 1
