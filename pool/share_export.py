"""`kzpool shares export`: every stored share, for operators and auditors, as JSON Lines or CSV.

Rows stream from the database in time order (a server-side cursor on PostgreSQL), so an export of
a billion shares needs no more memory than one of ten. Times are ISO 8601 UTC with microseconds;
hashes and extranonces are hex as the miner and block explorers show them. Shares already folded
by compaction are no longer here: their per-minute totals are in worker_stats_minute.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TextIO

from sqlalchemy import Select, select

from .db import Database
from .models import MICROS_PER_SECOND, Account, Share, Worker

ExportFormat = Literal["jsonl", "csv"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("jsonl", "csv")
EXPORT_FIELDS = ("time", "login", "worker", "job_id", "height", "difficulty", "share_hash",
                 "is_block", "extranonce1", "extranonce2", "ntime", "nonce", "version", "peer")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
STREAM_ROWS = 10_000


def to_micros(moment: datetime) -> int:
    """Exact integer microseconds since the epoch; naive datetimes are refused, not guessed."""
    if moment.tzinfo is None:
        raise ValueError(f"time {moment.isoformat()} has no timezone; give it in UTC")
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * MICROS_PER_SECOND + delta.microseconds


def iso_utc(time_us: int) -> str:
    return (EPOCH + timedelta(microseconds=time_us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def shares_query(since: datetime | None, until: datetime | None) -> Select[*tuple[Any, ...]]:
    """Shares with since <= time < until, oldest first."""
    query = (select(Share.time_us, Account.login, Worker.name, Share.job_id, Share.height,
                    Share.difficulty, Share.share_hash, Share.is_block, Share.extranonce1,
                    Share.extranonce2, Share.ntime, Share.nonce, Share.version, Share.peer)
             .join(Worker, Worker.id == Share.worker_id)
             .join(Account, Account.id == Worker.account_id)
             .order_by(Share.time_us, Share.worker_id, Share.share_hash))
    if since is not None:
        query = query.where(Share.time_us >= to_micros(since))
    if until is not None:
        query = query.where(Share.time_us < to_micros(until))
    return query


def export_values(row: Sequence[Any]) -> list[Any]:
    """One database row as the values of EXPORT_FIELDS."""
    (time_us, login, worker, job_id, height, difficulty, share_hash, is_block, extranonce1,
     extranonce2, ntime, nonce, version, peer) = row
    return [iso_utc(time_us), login, worker, job_id, height, difficulty, bytes(share_hash).hex(),
            bool(is_block), bytes(extranonce1).hex(), bytes(extranonce2).hex(), ntime, nonce,
            version, peer]


async def export_shares(db: Database, out: TextIO, since: datetime | None,
                        until: datetime | None, fmt: ExportFormat) -> int:
    """Write every share with since <= time < until to `out`; returns how many were written."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    csv_writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if csv_writer is not None:
        csv_writer.writerow(EXPORT_FIELDS)
    count = 0
    query = shares_query(since, until).execution_options(yield_per=STREAM_ROWS)
    async with db.engine.connect() as conn:
        result = await conn.stream(query)
        async for rows in result.partitions():
            for row in rows:
                values = export_values(row)
                if csv_writer is not None:
                    values[7] = "true" if values[7] else "false"  # as in the JSON export
                    csv_writer.writerow(values)
                else:
                    out.write(json.dumps(dict(zip(EXPORT_FIELDS, values)), separators=(",", ":")))
                    out.write("\n")
            count += len(rows)
    return count
