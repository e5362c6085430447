"""PPS and FPPS: shares credited from the stored shares table, periodically, never on the hot path.

Every `interval_s` the creditor reads the shares of closed minutes older than `lag_s` (batches
still committing) and newer than `recheck_s`, per worker and minute (raw shares plus what
compaction folded into worker_stats_minute, in one statement so one snapshot sees both), and
compares them with what it already credited (`pps_worker_minutes`). A minute not yet credited is
valued at the current rate; a minute that grew (a spill file replayed after a database outage
stores shares with their original times) is valued again at the rate it was first credited at, and
only the difference is credited. Values are micro-satoshis, floored once per worker-minute; each
login's cumulative value (`pps_accounts`) turns into whole satoshis by `schemes.pps_increment`.
The rows, the cumulative values and the ledger posting commit in one transaction, so crediting is
exactly once whatever crashes, and batching does not change the totals.

The rate: PPS pays `subsidy x d / D` per share of difficulty d at network difficulty D; FPPS adds
the mean transaction fees of the last `fee_window` heights' templates (`TemplateRates`). The
commission is taken from the gross credit; the pool's PPS balance pays the gross and receives
every found block's whole reward, so it carries the variance.

Shares older than `recheck_s` that reach the database only later (a spill file replayed after a
longer outage) are not credited automatically: `credit_once(since_s=...)` credits them.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction

from sqlalchemy import func, insert, literal, select, union_all, update

from pool.db import Database
from pool.models import MICROS_PER_SECOND, Share, WorkerStatsMinute
from pool.targets import network_difficulty
from pool.template import BlockTemplate

from . import schemes
from .ledger import AVAILABLE, POOL_FEES, POOL_PPS, Ledger, Posting, lines_from, miner_account
from .models import PpsAccount, PpsWorkerMinute
from .share_windows import worker_logins

log = logging.getLogger("kzpool.payouts.pps")

MINUTE_S = 60


@dataclass(frozen=True, slots=True)
class PpsRate:
    network_difficulty: float
    block_value_sats: int       # PPS: the subsidy; FPPS: subsidy + expected fees
    height: int


RateSource = Callable[[], Awaitable[PpsRate | None]]


class TemplateRates:
    """The rate from the pool's current template (`lambda: app.jobs.template`)."""

    def __init__(self, template: Callable[[], BlockTemplate | None], *, fpps: bool, fee_window: int = 144) -> None:
        self.template, self.fpps, self.fee_window = template, fpps, fee_window
        self._fees: dict[int, int] = {}      # height -> fees of the latest template seen at it

    async def __call__(self) -> PpsRate | None:
        tpl = self.template()
        if tpl is None:
            return None
        fees = sum(tx.fee for tx in tpl.transactions)
        self._fees[tpl.height] = fees
        for height in sorted(self._fees)[:-self.fee_window]:
            del self._fees[height]
        value = tpl.coinbasevalue - fees + (schemes.expected_fees(list(self._fees.values())) if self.fpps else 0)
        return PpsRate(network_difficulty(tpl.bits), value, tpl.height)


@dataclass(frozen=True, slots=True)
class PpsBatch:
    ref: str
    minutes: int            # worker-minutes credited or topped up
    gross_sats: int
    credits: dict[str, int]


class PpsCreditor:
    def __init__(self, db: Database, ledger: Ledger, rate: RateSource, *, fee_bps: int, scheme: str = "pps",
                 lag_s: float = 120.0, recheck_s: float = 3600.0, interval_s: float = 60.0,
                 settled: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.time) -> None:
        self.db, self.ledger, self.rate = db, ledger, rate
        self.fee_bps, self.scheme = fee_bps, scheme
        self.lag_s, self.recheck_s, self.interval_s = lag_s, recheck_s, interval_s
        self.settled = settled          # False while this process's share log has a spill backlog
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="pps-creditor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def run(self) -> None:
        while True:
            try:
                await self.credit_once()
            except Exception:
                log.exception("event=pps_credit_failed")
            await asyncio.sleep(self.interval_s)

    async def credit_once(self, since_s: float | None = None) -> PpsBatch | None:
        """Credit every closed minute in [since_s or now - recheck_s, now - lag_s) not yet credited
        in full. None when there was nothing to do (or no rate, or shares still spilled)."""
        if not self.settled():
            log.info("event=pps_credit_deferred reason=share_log_spilling")
            return None
        rate = await self.rate()
        if rate is None:
            return None
        now = self.clock()
        hi = int(now - self.lag_s) // MINUTE_S * MINUTE_S
        lo = int(now - self.recheck_s if since_s is None else since_s) // MINUTE_S * MINUTE_S
        if lo >= hi:
            return None
        seen = await self._aggregate(lo, hi)
        if not seen:
            return None
        async with self.db.engine.connect() as conn:
            logins = await worker_logins(conn, {w for w, _ in seen})
        async with self.ledger.write() as writer:
            batch = await self._post(writer, seen, logins, rate, lo, hi)
        if batch is not None:
            log.info("event=pps_credited ref=%s minutes=%d gross_sats=%d logins=%d", batch.ref, batch.minutes,
                     batch.gross_sats, len(batch.credits))
        return batch

    async def _aggregate(self, lo: int, hi: int) -> dict[tuple[int, int], tuple[int, Fraction]]:
        """(worker_id, minute_s) -> (shares, exact difficulty) over lo <= minute < hi."""
        minute = (Share.time_us // (MINUTE_S * MICROS_PER_SECOND)).label("minute")
        raw = (select(Share.worker_id, minute, Share.difficulty.label("d"), func.count().label("n"),
                      literal(0).label("folded"))
               .where(Share.time_us >= lo * MICROS_PER_SECOND, Share.time_us < hi * MICROS_PER_SECOND)
               .group_by(Share.worker_id, minute, Share.difficulty))
        folded = (select(WorkerStatsMinute.worker_id, (WorkerStatsMinute.minute_s // MINUTE_S).label("minute"),
                         WorkerStatsMinute.difficulty_sum.label("d"), WorkerStatsMinute.shares.label("n"),
                         literal(1).label("folded"))
                  .where(WorkerStatsMinute.minute_s >= lo, WorkerStatsMinute.minute_s < hi))
        out: dict[tuple[int, int], tuple[int, Fraction]] = {}
        async with self.db.engine.connect() as conn:
            for worker_id, minute_no, d, n, was_folded in await conn.execute(union_all(raw, folded)):
                key = (worker_id, int(minute_no) * MINUTE_S)
                count, total = out.get(key, (0, Fraction(0)))
                out[key] = (count + int(n), total + (Fraction(d) if was_folded else Fraction(d) * int(n)))
        return out

    async def _post(self, writer, seen, logins, rate: PpsRate, lo: int, hi: int) -> PpsBatch | None:
        conn = writer.conn
        credited = {(r.worker_id, r.minute_s): r for r in await conn.execute(
            select(PpsWorkerMinute).where(PpsWorkerMinute.minute_s >= lo, PpsWorkerMinute.minute_s < hi))}
        delta_usat: dict[str, int] = {}
        inserts, minutes = [], 0
        for (worker_id, minute_s), (count, difficulty) in sorted(seen.items()):
            old = credited.get((worker_id, minute_s))
            if old is not None and count <= old.shares:
                continue
            login = old.login if old is not None else logins.get(worker_id, f"worker-{worker_id}")
            if old is None:
                value = schemes.pps_value_usat(difficulty, rate.network_difficulty, rate.block_value_sats)
                inserts.append({"worker_id": worker_id, "minute_s": minute_s, "login": login, "shares": count,
                                "value_usat": value, "network_difficulty": rate.network_difficulty,
                                "block_value_sats": rate.block_value_sats})
                added = value
            else:
                value = schemes.pps_value_usat(difficulty, old.network_difficulty, old.block_value_sats)
                added = max(0, value - old.value_usat)
                await conn.execute(update(PpsWorkerMinute).where(
                    PpsWorkerMinute.worker_id == worker_id, PpsWorkerMinute.minute_s == minute_s)
                    .values(shares=count, value_usat=old.value_usat + added))
            delta_usat[login] = delta_usat.get(login, 0) + added
            minutes += 1
        if not minutes:
            return None
        if inserts:
            await conn.execute(insert(PpsWorkerMinute), inserts)
        accounts = {r.login: r for r in await conn.execute(
            select(PpsAccount).where(PpsAccount.login.in_(sorted(delta_usat))))}
        credits: dict[str, schemes.PpsCredit] = {}
        for login, added in sorted(delta_usat.items()):
            row = accounts.get(login)
            before = row.value_sats * schemes.USAT_PER_SAT + row.carry_usat if row else 0
            after = before + added
            credits[login] = schemes.pps_increment(before, after, self.fee_bps)
            values = {"value_sats": after // schemes.USAT_PER_SAT, "carry_usat": after % schemes.USAT_PER_SAT}
            if row is None:
                await conn.execute(insert(PpsAccount).values(login=login, **values))
            else:
                await conn.execute(update(PpsAccount).where(PpsAccount.login == login).values(**values))
        gross = sum(c.gross for c in credits.values())
        ref = f"{self.scheme}:{hi}:{uuid.uuid4().hex[:12]}"
        lines = lines_from([(POOL_PPS, -gross, 0), (POOL_FEES, sum(c.commission for c in credits.values()), 0)]
                           + [(miner_account(login, AVAILABLE), c.net, c.commission)
                              for login, c in credits.items()])
        await writer.post(Posting(ref, f"{self.scheme}_credit", lines, {
            "from_s": lo, "to_s": hi, "worker_minutes": minutes, "network_difficulty": rate.network_difficulty,
            "block_value_sats": rate.block_value_sats, "height": rate.height}))
        return PpsBatch(ref, minutes, gross, {login: c.net for login, c in credits.items()})
