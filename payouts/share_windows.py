"""Reading the shares behind a block: the PPLNS window, the PROP round, the finder.

Shares are ordered by the key (time_us, share_hash, worker_id), oldest first; the block's own
share ends its window. Weights are exact: the database groups by (worker, difficulty) and counts,
and Python multiplies each count by the difficulty's exact binary value. Vardiff gives a worker
few distinct difficulties, so a window of millions of shares comes back as a few rows per worker.

The PPLNS window is walked back an hour at a time; the hour where the window's edge falls is
walked by minutes, and only the minute of the edge is read share by share (the edge share counts
for its part inside the window). Gaps are skipped with one MAX(time_us) query each, so a pool that
was idle for a month does not walk a month of empty hours.

Only raw shares are read: compaction keeps raw shares of unsettled blocks (pool/compaction.py),
and its `--keep` must cover the PPLNS window. A window that runs out of shares is reported as not
filled (the shares there are paid the whole reward).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from sqlalchemy import and_, func, select, true, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from pool.models import MICROS_PER_SECOND, Account, Share, Worker

HOUR_US = 3600 * MICROS_PER_SECOND
MINUTE_US = 60 * MICROS_PER_SECOND


@dataclass(frozen=True, slots=True, order=True)
class ShareKey:
    time_us: int
    share_hash: bytes
    worker_id: int


@dataclass(frozen=True, slots=True)
class Window:
    weights: dict[str, Fraction]      # login -> difficulty counted
    counted: Fraction                 # total difficulty counted
    filled: bool                      # False: the shares ran out before the window did


async def find_block_share(conn: AsyncConnection, block_hash_display: str) -> ShareKey | None:
    """The share that was the block (its hash is the block hash); None until it is stored."""
    row = (await conn.execute(select(Share.time_us, Share.share_hash, Share.worker_id).where(
        Share.share_hash == bytes.fromhex(block_hash_display),
        Share.is_block == true()))).first()   # the form ix_shares_block_hash's predicate matches
    return ShareKey(row.time_us, bytes(row.share_hash), row.worker_id) if row else None


async def worker_logins(conn: AsyncConnection, worker_ids: Iterable[int]) -> dict[int, str]:
    ids = sorted(set(worker_ids))
    if not ids:
        return {}
    rows = await conn.execute(select(Worker.id, Account.login).join(Account, Account.id == Worker.account_id)
                              .where(Worker.id.in_(ids)))
    return {worker_id: login for worker_id, login in rows}


class _Weights:
    """Per-worker exact difficulty, turned into per-login weights at the end."""

    def __init__(self) -> None:
        self.by_worker: dict[int, Fraction] = {}

    def add(self, worker_id: int, difficulty: Fraction) -> None:
        self.by_worker[worker_id] = self.by_worker.get(worker_id, Fraction(0)) + difficulty

    async def by_login(self, conn: AsyncConnection) -> dict[str, Fraction]:
        logins = await worker_logins(conn, self.by_worker)
        out: dict[str, Fraction] = {}
        for worker_id, weight in self.by_worker.items():
            login = logins.get(worker_id, f"worker-{worker_id}")
            out[login] = out.get(login, Fraction(0)) + weight
        return out


async def _aggregate(conn: AsyncConnection, lo: int, hi: int) -> dict[int, Fraction]:
    """Exact difficulty per worker over lo <= time_us < hi."""
    rows = await conn.execute(
        select(Share.worker_id, Share.difficulty, func.count()).where(Share.time_us >= lo, Share.time_us < hi)
        .group_by(Share.worker_id, Share.difficulty))
    out: dict[int, Fraction] = {}
    for worker_id, difficulty, count in rows:
        out[worker_id] = out.get(worker_id, Fraction(0)) + Fraction(difficulty) * count
    return out


async def _newest_before(conn: AsyncConnection, floor: int, hi: int) -> int | None:
    return (await conn.execute(select(func.max(Share.time_us)).where(
        Share.time_us >= floor, Share.time_us < hi))).scalar()


async def _take_individual(conn: AsyncConnection, condition, left: Fraction, acc: _Weights) -> Fraction:
    """Shares matching `condition`, newest first, until `left` is used up."""
    rows = await conn.execute(select(Share.worker_id, Share.difficulty).where(condition).order_by(
        Share.time_us.desc(), Share.share_hash.desc(), Share.worker_id.desc()))
    for worker_id, difficulty in rows:
        take = min(Fraction(difficulty), left)
        acc.add(worker_id, take)
        left -= take
        if left == 0:
            break
    return left


async def _walk_back(conn: AsyncConnection, floor: int, hi: int, left: Fraction, acc: _Weights,
                     spans: tuple[int, ...]) -> Fraction:
    """Count shares with floor <= time_us < hi, newest first, until `left` is used up."""
    while left > 0:
        newest = await _newest_before(conn, floor, hi)
        if newest is None:
            return left
        lo = max(floor, newest - newest % spans[0])
        chunk = await _aggregate(conn, lo, hi)
        total = sum(chunk.values(), Fraction(0))
        if total <= left:
            for worker_id, weight in chunk.items():
                acc.add(worker_id, weight)
            left -= total
        elif len(spans) > 1:
            left = await _walk_back(conn, lo, hi, left, acc, spans[1:])
        else:
            left = await _take_individual(conn, and_(Share.time_us >= lo, Share.time_us < hi), left, acc)
        hi = lo
    return left


async def pplns_window(conn: AsyncConnection, end: ShareKey, window: Fraction) -> Window:
    """The last `window` units of share difficulty up to and including the share `end`."""
    acc = _Weights()
    key = tuple_(Share.time_us, Share.share_hash, Share.worker_id)
    same_time = and_(Share.time_us == end.time_us, key <= (end.time_us, end.share_hash, end.worker_id))
    left = await _take_individual(conn, same_time, Fraction(window), acc)
    left = await _walk_back(conn, 0, end.time_us, left, acc, (HOUR_US, MINUTE_US))
    return Window(await acc.by_login(conn), Fraction(window) - left, left == 0)


async def round_window(conn: AsyncConnection, start: ShareKey | None, end: ShareKey) -> Window:
    """PROP: every share after `start` (the previous block's window end, exclusive) up to `end`."""
    acc = _Weights()
    key = tuple_(Share.time_us, Share.share_hash, Share.worker_id)
    end_key = (end.time_us, end.share_hash, end.worker_id)
    lo = start.time_us if start else 0
    edges = [and_(Share.time_us == end.time_us, key <= end_key)]
    if start is not None and start.time_us != end.time_us:
        edges.append(and_(Share.time_us == start.time_us, key > (start.time_us, start.share_hash, start.worker_id)))
    elif start is not None:
        edges = [and_(Share.time_us == end.time_us, key <= end_key,
                      key > (start.time_us, start.share_hash, start.worker_id))]
    for edge in edges:
        rows = await conn.execute(select(Share.worker_id, Share.difficulty).where(edge))
        for worker_id, difficulty in rows:
            acc.add(worker_id, Fraction(difficulty))
    inner_lo = lo + 1 if start is not None else 0
    if inner_lo < end.time_us:
        for worker_id, weight in (await _aggregate(conn, inner_lo, end.time_us)).items():
            acc.add(worker_id, weight)
    weights = await acc.by_login(conn)
    return Window(weights, sum(weights.values(), Fraction(0)), True)
