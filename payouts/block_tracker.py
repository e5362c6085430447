"""Found blocks from submission to maturity: the blocks table, the node's word, the ledger.

`on_block(event, block_bytes)` is a `PoolShareSink.on_block` hook: it records the block row
(status accepted if a node took it, else submitted) off the hot path, retrying while the database
is away. The maturity loop (`run()`, or `check_once()`) asks `confirmations(hash)` for every
unsettled block:
- None or negative: not in the best chain (rejected, or lost a reorg): orphaned; its credits, if
  posted, are reversed by the exact opposite posting;
- 1 or more: in the chain; its reward is credited once as immature (`block:<hash>:found`), split
  by the configured scheme (PPS/FPPS: the whole reward to the pool's PPS balance, which already
  paid the miners per share);
- `maturity` or more: confirmed; the immature credits move to available (`block:<hash>:matured`).
A callable that raises (node unreachable) leaves the block as it is until the next pass.
Orphaned is final: a block orphaned and later back in the chain stays with the pool.

Reorgs deeper than maturity: a confirmed block is asked about again on every pass until it has
`maturity + REORG_WATCH` confirmations. If the node then places it off its best chain (negative
confirmations: the node knows the block, not in its main chain) the reward the miners could
already spend is gone: `block:<hash>:reorged` gives the coinbase back to `chain:coinbase`, takes
the pool's part (fees, PPS) back in full and each miner's credit back from its available, then
frozen balance, never below zero; what a miner no longer holds (paid out, or in a payout run) is
the pool's loss, booked to `pool:deficit` (ledger.claw_back). Status orphaned, audit
`block_status` with status `reorged_after_maturity` (the per-login shortfall, and the payout
runs sent since the block matured: their transactions may have spent the lost coinbase), an
ERROR log line, and `deep_reorgs` counts them. A matured block the node says does not exist
(None) is not treated as orphaned: a node that lost a block it had 100 confirmations on is a node
problem, logged as `block_matured_unknown` and asked again.

Crediting reads the shares outside any write transaction (a big window must not hold SQLite's
write lock against the share log), then posts in a short one; the posting's ref makes a race
between two trackers, or a crash and a retry, count once.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update

from compliance import audit_events
from pool.db import Database
from pool.models import Block, BlockStatus, Worker
from pool.shares import BlockEvent
from pool.targets import network_difficulty
from pool.txparse import Block as RawBlock

from . import schemes
from .ledger import (CHAIN_COINBASE, IMMATURE, POOL_FEES, POOL_FEES_IMMATURE, POOL_PPS, POOL_PPS_IMMATURE,
                     AuditSink, Ledger, Line, Posting, claw_back, lines_from, miner_account, parse_miner_account)
from .models import LedgerTxn, PayoutRound, PayoutRun
from .run_store import SENT
from .share_windows import ShareKey, Window, find_block_share, pplns_window, round_window, worker_logins

log = logging.getLogger("kzpool.payouts.blocks")

Confirmations = Callable[[str], Awaitable[int | None]]
UNSETTLED = (BlockStatus.SUBMITTED, BlockStatus.ACCEPTED)
# Used when a block's own share never reached the database: every share up to the block's time.
LAST_KEY_AT = (b"\xff" * 32, 2**31 - 1)
MATURE_ACCOUNT = {POOL_FEES_IMMATURE: POOL_FEES, POOL_PPS_IMMATURE: POOL_PPS}
# Confirmations past maturity during which a matured block is still checked. Mainnet's deepest
# reorganisations were 53 blocks (2010, the value-overflow fix) and 24 (2013, the 0.8 fork), far
# below maturity; a test network reorganises deeper (testnet has seen thousands). A block still in
# the chain at maturity + 100 confirmations is past anything but a chain-wide incident, which needs
# the operator anyway; the watch costs one getblockheader per matured block per pass for about
# 100 more blocks (~17 hours on mainnet).
REORG_WATCH = 100


def block_reward(block: bytes) -> tuple[int, float]:
    """(coinbase outputs in sats, network difficulty) of a serialized block."""
    parsed = RawBlock.deserialize(block)
    return sum(out.value for out in parsed.transactions[0].outputs), network_difficulty(parsed.header.bits)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class BlockTracker:
    def __init__(self, db: Database, ledger: Ledger, confirmations: Confirmations, *, scheme: str = "pplns",
                 fee_bps: int = 100, pplns_window_factor: float = 2.0, maturity: int = 100,
                 share_wait_s: float = 60.0, interval_s: float = 30.0, audit: AuditSink | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.ledger, self.confirmations = db, ledger, confirmations
        self.scheme, self.fee_bps, self.window_factor = scheme, fee_bps, pplns_window_factor
        self.maturity, self.share_wait_s, self.interval_s = maturity, share_wait_s, interval_s
        self.audit, self.clock = audit, clock
        self.reorg_watch = REORG_WATCH
        self.deep_reorgs = 0                    # matured blocks found reorganised out, this process
        self._past_watch: set[str] = set()      # confirmed blocks seen past maturity + reorg_watch
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- the share sink's hook -------------------------------------------------------------------
    def on_block(self, event: BlockEvent, block: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self.record_block(event, block))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def record_block(self, event: BlockEvent, block: bytes) -> None:
        reward, difficulty = block_reward(block)
        status = BlockStatus.ACCEPTED if event.accepted else BlockStatus.SUBMITTED
        delay = 1.0
        while not self._stopping:
            try:
                async with self.db.engine.begin() as conn:
                    finder = (await conn.execute(select(Worker.id).where(Worker.name == event.worker))).scalars().all()
                    await conn.execute(self.db.insert_ignoring_duplicates(Block).values(
                        height=event.height, hash=event.hash_display, status=status, reward_sats=reward,
                        finder_worker_id=finder[0] if len(finder) == 1 else None,
                        network_difficulty=difficulty, found_at=datetime.fromtimestamp(event.at, UTC)))
                log.info("event=block_recorded height=%d hash=%s status=%s reward_sats=%d", event.height,
                         event.hash_display, status.value, reward)
                return
            except Exception as exc:
                log.warning("event=block_record_failed hash=%s error=%s retry_s=%g", event.hash_display,
                            type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    # -- the maturity loop -----------------------------------------------------------------------
    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self.run(), name="block-tracker")

    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:
                log.exception("event=block_check_failed")
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)

    async def drain(self) -> None:
        """Wait until every block handed to `on_block` is recorded (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def check_once(self) -> dict[str, str]:
        """One pass over unsettled blocks; returns {hash: status} of the blocks it changed."""
        async with self.db.engine.connect() as conn:
            blocks = (await conn.execute(select(Block).where(Block.status.in_(UNSETTLED))
                                         .order_by(Block.height, Block.id))).all()
        changed: dict[str, str] = {}
        for block in blocks:
            try:
                confs = await self.confirmations(block.hash)
            except Exception as exc:
                log.warning("event=block_confirmations_unknown hash=%s error=%s", block.hash, exc)
                continue
            if confs is None or confs < 0:
                await self._orphan(block, confs)
                changed[block.hash] = BlockStatus.ORPHANED.value
            elif confs >= 1 and await self._credit(block):
                if confs >= self.maturity:
                    await self._mature(block, confs)
                    changed[block.hash] = BlockStatus.CONFIRMED.value
                elif block.status is not BlockStatus.ACCEPTED:
                    await self._set_status(block, BlockStatus.ACCEPTED)
                    changed[block.hash] = BlockStatus.ACCEPTED.value
        changed.update(await self._watch_matured())
        return changed

    async def _watch_matured(self) -> dict[str, str]:
        """Confirmed blocks not yet `maturity + reorg_watch` deep, asked again. Every block within
        that depth of the tip is higher than (the highest block the pool found) - maturity -
        reorg_watch, so that bound selects them all, and blocks seen past it are skipped."""
        horizon = self.maturity + self.reorg_watch
        async with self.db.engine.connect() as conn:
            top = (await conn.execute(select(func.max(Block.height)))).scalar()
            if top is None:
                return {}
            blocks = (await conn.execute(select(Block).where(Block.status == BlockStatus.CONFIRMED,
                                                             Block.height > top - horizon)
                                         .order_by(Block.height, Block.id))).all()
        changed: dict[str, str] = {}
        for block in blocks:
            if block.hash in self._past_watch:
                continue
            try:
                confs = await self.confirmations(block.hash)
            except Exception as exc:
                log.warning("event=block_confirmations_unknown hash=%s error=%s", block.hash, exc)
                continue
            if confs is None:
                log.warning("event=block_matured_unknown height=%d hash=%s: the node does not know a block that "
                            "matured; not treated as orphaned, asked again next pass", block.height, block.hash)
            elif confs < 0:
                await self._reorged_after_maturity(block, confs)
                changed[block.hash] = BlockStatus.ORPHANED.value
            elif confs >= horizon:
                self._past_watch.add(block.hash)
        return changed

    async def _set_status(self, block: Any, status: BlockStatus, conn: Any = None) -> None:
        statement = update(Block).where(Block.id == block.id).values(status=status)
        if conn is not None:
            await conn.execute(statement)
            return
        async with self.db.engine.begin() as own:
            await own.execute(statement)

    def _record_status(self, block: Any, status: str, **details: Any) -> None:
        log.info("event=block_%s height=%d hash=%s", status, block.height, block.hash)
        if self.audit is not None:
            self.audit(audit_events.BLOCK_STATUS, audit_events.block_status(block.height, block.hash, status,
                                                                           **details))

    async def _credit(self, block: Any) -> bool:
        """Post the block's immature credits once; False while its share may still be on its way."""
        ref = f"block:{block.hash}:found"
        async with self.db.engine.connect() as conn:
            if await self.ledger.lines(ref):
                return True
            end = await find_block_share(conn, block.hash)
            found_us = round(_aware(block.found_at).timestamp() * 1e6)
            if end is None:
                if self.clock() * 1e6 - found_us < self.share_wait_s * 1e6:
                    return False
                log.warning("event=block_share_missing hash=%s fallback=found_at", block.hash)
                end = ShareKey(found_us, *LAST_KEY_AT)
            distribution, window, memo = await self._distribution(conn, block, end)
        posting = Posting(ref, "block_found", self._found_lines(block.reward_sats, distribution), {
            "height": block.height, "hash": block.hash, "scheme": self.scheme, "reward_sats": block.reward_sats,
            "fee_sats": distribution.fee if distribution else 0, "end_time_us": end.time_us, **memo})
        async with self.ledger.write() as writer:
            if await writer.post(posting):
                await writer.conn.execute(self.db.insert_ignoring_duplicates(PayoutRound).values(
                    block_hash=block.hash, height=block.height, scheme=self.scheme, end_time_us=end.time_us,
                    end_share_hash=end.share_hash if end.worker_id != LAST_KEY_AT[1] else b"",
                    end_worker_id=end.worker_id if end.worker_id != LAST_KEY_AT[1] else 0,
                    credited_us=round(self.clock() * 1e6)))
                if block.finder_worker_id is None and end.worker_id != LAST_KEY_AT[1]:
                    await writer.conn.execute(update(Block).where(Block.id == block.id)
                                              .values(finder_worker_id=end.worker_id))
        return True

    async def _distribution(self, conn: Any, block: Any, end: ShareKey
                            ) -> tuple[schemes.Distribution | None, Window | None, dict[str, Any]]:
        reward, fee_bps = block.reward_sats, self.fee_bps
        if self.scheme in ("pps", "fpps"):
            return None, None, {}
        if self.scheme == "solo":
            logins = await worker_logins(conn, [end.worker_id])
            return schemes.solo(reward, fee_bps, logins.get(end.worker_id)), None, {}
        if self.scheme == "pplns":
            window = await pplns_window(conn, end, schemes.pplns_window(block.network_difficulty, self.window_factor))
        else:
            previous = (await conn.execute(
                select(PayoutRound.end_time_us, PayoutRound.end_share_hash, PayoutRound.end_worker_id)
                .where(PayoutRound.end_time_us <= end.time_us, PayoutRound.block_hash != block.hash)
                .order_by(PayoutRound.end_time_us.desc(), PayoutRound.end_share_hash.desc()).limit(1))).first()
            start = ShareKey(previous[0], bytes(previous[1]), previous[2]) if previous else None
            window = await round_window(conn, start, end)
        memo = {"window_difficulty": str(window.counted), "window_filled": window.filled,
                "logins": len(window.weights)}
        return schemes.distribute(reward, fee_bps, window.weights), window, memo

    def _found_lines(self, reward: int, dist: schemes.Distribution | None) -> tuple[Line, ...]:
        if dist is None:                       # PPS/FPPS: the pool already paid per share
            return lines_from([(CHAIN_COINBASE, -reward, 0), (POOL_PPS_IMMATURE, reward, 0)])
        assert dist.conserved(), dist
        return lines_from([(CHAIN_COINBASE, -reward, 0), (POOL_FEES_IMMATURE, dist.pool_sats, 0)]
                          + [(miner_account(login, IMMATURE), sats, dist.commissions.get(login, 0))
                             for login, sats in sorted(dist.credits.items())])

    async def _mature(self, block: Any, confs: int) -> None:
        found = await self.ledger.lines(f"block:{block.hash}:found")
        moves: list[Line] = []
        for line in found:
            target = MATURE_ACCOUNT.get(line.account)
            miner = parse_miner_account(line.account)
            if miner is not None:
                target = miner_account(miner[0], "available")
            if target is not None:
                moves += [Line(line.account, -line.amount, -line.commission),
                          Line(target, line.amount, line.commission)]
        async with self.ledger.write() as writer:
            await writer.post(Posting(f"block:{block.hash}:matured", "block_matured", tuple(moves),
                                      {"height": block.height, "hash": block.hash, "confirmations": confs}))
            await self._set_status(block, BlockStatus.CONFIRMED, writer.conn)
        self._record_status(block, BlockStatus.CONFIRMED.value, confirmations=confs, reward_sats=block.reward_sats)

    async def _orphan(self, block: Any, confs: int | None) -> None:
        found_ref = f"block:{block.hash}:found"
        async with self.ledger.write() as writer:
            found = await writer.lines(found_ref)
            reversed_sats = 0
            if found and not await writer.has(f"block:{block.hash}:matured"):
                original = Posting(found_ref, "block_found", found)
                await writer.post(original.reversed(f"block:{block.hash}:orphaned", "block_orphaned", {
                    "height": block.height, "hash": block.hash, "confirmations": confs}))
                reversed_sats = block.reward_sats
            await self._set_status(block, BlockStatus.ORPHANED, writer.conn)
        self._record_status(block, BlockStatus.ORPHANED.value, confirmations=confs, reversed_sats=reversed_sats)

    async def _reorged_after_maturity(self, block: Any, confs: int) -> None:
        """The reward of a matured block the chain took back: see the module docstring."""
        ref = f"block:{block.hash}:reorged"
        async with self.ledger.write() as writer:
            found = await writer.lines(f"block:{block.hash}:found")
            matured = await writer.lines(f"block:{block.hash}:matured")
            reward = -sum(l.amount for l in found if l.account == CHAIN_COINBASE)
            lines: list[Line] = [Line(CHAIN_COINBASE, reward)] if reward else []
            claims: list[tuple[str, int, int]] = []
            for line in matured:
                if line.amount <= 0:
                    continue                    # the immature side of the move
                miner = parse_miner_account(line.account)
                if miner is not None:
                    claims.append((miner[0], line.amount, line.commission))
                else:                           # pool:fees, pool:pps: the pool's own, back in full
                    lines.append(Line(line.account, -line.amount, -line.commission))
            taken, shortfall = claw_back(await writer.balances("miner:"), claims)
            lines += taken
            matured_us = (await writer.conn.execute(select(LedgerTxn.time_us).where(
                LedgerTxn.ref == f"block:{block.hash}:matured"))).scalar()
            runs = [r for (r,) in await writer.conn.execute(
                select(PayoutRun.id).where(PayoutRun.status == SENT, PayoutRun.sent_us >= (matured_us or 0))
                .order_by(PayoutRun.sent_us))]
            posted = await writer.post(Posting(ref, "block_reorged", lines_from(
                (l.account, l.amount, l.commission) for l in lines), {
                "height": block.height, "hash": block.hash, "confirmations": confs, "reward_sats": reward,
                "shortfall": shortfall}))
            await self._set_status(block, BlockStatus.ORPHANED, writer.conn)
        if not posted:
            return
        self.deep_reorgs += 1
        deficit = sum(shortfall.values())
        log.error("event=block_reorged_after_maturity height=%d hash=%s reward_sats=%d deficit_sats=%d "
                  "runs_to_check=%d: a block that had matured left the best chain; its credits were taken back, the shortfall is "
                  "pool:deficit; payout runs sent since it matured may have spent its coinbase (docs/payouts.md)",
                  block.height, block.hash, reward, deficit, len(runs))
        self._record_status(block, "reorged_after_maturity", confirmations=confs, reward_sats=reward,
                            deficit_sats=deficit, shortfall=shortfall, runs_to_check=runs)
