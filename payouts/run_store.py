"""Payout runs in the database and their ledger postings.

A run's life: `prepare` commits the run, its items and the reserve posting (each miner's amount
moves from `available` to `payout:in_flight`) in one transaction, before anything is sent. Then:
- `mark_sent` (the wallet has the transaction): in_flight -> chain:payments, and the network fee
  from the pool's fees to chain:network_fees; status sent;
- `mark_psbt`: the unsigned PSBT is written; the money stays in flight until the wallet sees it;
- `cancel`: the wallet positively does not have it (refused it, or a lost run past its grace
  time, or an operator's `kzpool payouts cancel` of a PSBT never broadcast): the reserve is
  reversed exactly, status cancelled or failed;
- `mark_sent_after_cancel`: a cancelled PSBT run's transaction reached the wallet after all (the
  signer broadcast it anyway): its amounts are taken back from the miners (`claw_back`, the rest
  to `pool:deficit`), the payment booked, status sent, so the report shows the distribution.
Postings are keyed `payout:<run>:reserve|sent|cancelled`, so a retried step counts once.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select, update

from pool.db import Database

from .ledger import AVAILABLE, CHAIN_NETWORK_FEES, CHAIN_PAYMENTS, PAYOUT_IN_FLIGHT, POOL_FEES, Ledger, Line, \
    Posting, claw_back, lines_from, miner_account
from .models import PayoutItem, PayoutRun
from .payout_plan import PlannedItem, outputs_of

PREPARED, PSBT, SENT, CANCELLED, FAILED = "prepared", "psbt", "sent", "cancelled", "failed"
IN_FLIGHT = (PREPARED, PSBT)


@dataclass(frozen=True, slots=True)
class StoredRun:
    id: str
    label: str
    method: str
    status: str
    created_us: int
    total_sats: int
    txid: str | None = None
    sent_us: int | None = None
    items: list[PlannedItem] = field(default_factory=list)
    psbt_path: str | None = None
    note: str = ""

    @property
    def outputs(self) -> dict[str, int]:
        return outputs_of(self.items)


def _reserve(run_id: str, items: Sequence[PlannedItem]) -> Posting:
    lines = [Line(miner_account(i.login, AVAILABLE), -i.amount_sats, -i.commission_sats) for i in items]
    lines.append(Line(PAYOUT_IN_FLIGHT, sum(i.amount_sats for i in items)))
    return Posting(f"payout:{run_id}:reserve", "payout_reserve", tuple(lines),
                   {"run": run_id, "items": len(items)})


class RunStore:
    def __init__(self, db: Database, ledger: Ledger, clock: Callable[[], float] = time.time) -> None:
        self.db, self.ledger, self.clock = db, ledger, clock

    def _now_us(self) -> int:
        return round(self.clock() * 1e6)

    async def prepare(self, run_id: str, label: str, method: str, planned: Sequence[PlannedItem]) -> StoredRun | None:
        """Commit the run and reserve its amounts. An item whose balance shrank since it was planned
        (a freeze by another run cannot happen under the run lock, but the check is cheap) is left
        out; None when nothing is left to pay."""
        async with self.ledger.write() as writer:
            balances = await writer.balances("miner:")
            items = [i for i in planned
                     if balances.get(miner_account(i.login, AVAILABLE)) is not None
                     and balances[miner_account(i.login, AVAILABLE)].amount >= i.amount_sats]
            if not items:
                return None
            now, total = self._now_us(), sum(i.amount_sats for i in items)
            await writer.conn.execute(insert(PayoutRun).values(
                id=run_id, label=label, method=method, status=PREPARED, created_us=now, updated_us=now,
                total_sats=total, note=""))
            await writer.conn.execute(insert(PayoutItem), [
                {"run_id": run_id, "item_no": n, "login": i.login, "licence_no": i.licence_no,
                 "licence_issued": i.licence_issued, "amount_sats": i.amount_sats,
                 "commission_sats": i.commission_sats, "wallet_address": i.wallet_address,
                 "wallet_sats": i.wallet_sats, "exchange_id": i.exchange_id, "exchange_address": i.exchange_address,
                 "exchange_sats": i.exchange_sats, "exchange_share_bps": i.exchange_share_bps}
                for n, i in enumerate(items, 1)])
            await writer.post(_reserve(run_id, items))
        return StoredRun(run_id, label, method, PREPARED, now, total, items=list(items))

    async def run(self, run_id: str) -> StoredRun | None:
        found = await self.runs(None, run_id=run_id)
        return found[0] if found else None

    async def runs(self, statuses: Sequence[str] | None = IN_FLIGHT, *, sent_from_us: int | None = None,
                   sent_to_us: int | None = None, run_id: str | None = None) -> list[StoredRun]:
        query = select(PayoutRun)
        if statuses is not None:
            query = query.where(PayoutRun.status.in_(list(statuses)))
        if run_id is not None:
            query = query.where(PayoutRun.id == run_id)
        if sent_from_us is not None:
            query = query.where(PayoutRun.sent_us >= sent_from_us)
        if sent_to_us is not None:
            query = query.where(PayoutRun.sent_us < sent_to_us)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(PayoutRun.sent_us, PayoutRun.created_us))).all()
            items = (await conn.execute(select(PayoutItem).where(PayoutItem.run_id.in_([r.id for r in rows]))
                                        .order_by(PayoutItem.run_id, PayoutItem.item_no))).all()
        by_run: dict[str, list[PlannedItem]] = {}
        for i in items:
            by_run.setdefault(i.run_id, []).append(PlannedItem(
                i.login, i.licence_no, i.licence_issued, i.amount_sats, i.commission_sats, i.wallet_address,
                i.wallet_sats, i.exchange_id, i.exchange_address, i.exchange_sats, i.exchange_share_bps))
        return [StoredRun(r.id, r.label, r.method, r.status, r.created_us, r.total_sats, r.txid, r.sent_us,
                          by_run.get(r.id, []), r.psbt_path, r.note or "") for r in rows]

    async def mark_sent(self, run: StoredRun, txid: str, fee_sats: int, sent_us: int | None = None) -> bool:
        """Record the wallet's transaction; False if the run was already marked (a retried step).
        `sent_us`: when the wallet got it (reconciled runs), else now; the report's date."""
        posting = Posting(f"payout:{run.id}:sent", "payout_sent", lines_from([
            (PAYOUT_IN_FLIGHT, -run.total_sats, 0), (CHAIN_PAYMENTS, run.total_sats, 0),
            (POOL_FEES, -fee_sats, 0), (CHAIN_NETWORK_FEES, fee_sats, 0)]),
            {"run": run.id, "txid": txid, "network_fee_sats": fee_sats})
        async with self.ledger.write() as writer:
            if not await writer.post(posting):
                return False
            now = self._now_us()
            await writer.conn.execute(update(PayoutRun).where(PayoutRun.id == run.id).values(
                status=SENT, txid=txid, network_fee_sats=fee_sats, sent_us=sent_us or now, updated_us=now))
        return True

    async def mark_psbt(self, run: StoredRun, txid: str, path: str, fee_sats: int) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(update(PayoutRun).where(PayoutRun.id == run.id).values(
                status=PSBT, txid=txid, psbt_path=path, network_fee_sats=fee_sats, updated_us=self._now_us()))

    async def cancel(self, run: StoredRun, status: str, note: str, *, memo: Mapping[str, Any] | None = None,
                     psbt_path: str | None = None) -> bool:
        """Give the reserved amounts back to the miners' available balances, and close the run, in
        one transaction. False (nothing written) when the run was already cancelled: its
        `payout:<run>:cancelled` posting exists. `memo` adds facts to the posting (who, why);
        `psbt_path` records where the run's PSBT file went."""
        async with self.ledger.write() as writer:
            reserve = await writer.lines(f"payout:{run.id}:reserve")
            if await writer.has(f"payout:{run.id}:sent"):
                raise RuntimeError(f"payout run {run.id} was sent; it cannot be cancelled")
            posted = await writer.post(Posting(f"payout:{run.id}:reserve", "payout_reserve", reserve).reversed(
                f"payout:{run.id}:cancelled", "payout_cancelled", {"run": run.id, "reason": note, **(memo or {})}))
            if not posted:
                return False
            values: dict[str, Any] = dict(status=status, note=note, updated_us=self._now_us())
            if psbt_path is not None:
                values["psbt_path"] = psbt_path
            await writer.conn.execute(update(PayoutRun).where(PayoutRun.id == run.id).values(**values))
        return True

    async def mark_sent_after_cancel(self, run: StoredRun, txid: str, fee_sats: int, sent_us: int | None
                                     ) -> dict[str, int] | None:
        """Book a cancelled run's transaction that reached the wallet anyway: each item's amount (and
        commission) back from the miner (`claw_back`: available, then frozen, the rest from
        `pool:deficit`) to chain:payments, the network fee from the pool's fees; status sent.
        Returns the shortfall per login (what the pool paid twice), None if already booked."""
        async with self.ledger.write() as writer:
            if await writer.has(f"payout:{run.id}:sent"):
                return None
            balances = await writer.balances("miner:")
            taken, shortfall = claw_back(balances, [(i.login, i.amount_sats, i.commission_sats) for i in run.items])
            posting = Posting(f"payout:{run.id}:sent", "payout_sent_after_cancel", tuple(taken) + lines_from([
                (CHAIN_PAYMENTS, run.total_sats, 0), (POOL_FEES, -fee_sats, 0), (CHAIN_NETWORK_FEES, fee_sats, 0)]),
                {"run": run.id, "txid": txid, "network_fee_sats": fee_sats, "shortfall": shortfall})
            await writer.post(posting)
            now = self._now_us()
            await writer.conn.execute(update(PayoutRun).where(PayoutRun.id == run.id).values(
                status=SENT, txid=txid, network_fee_sats=fee_sats, sent_us=sent_us or now, updated_us=now,
                note=f"{run.note}; broadcast after the cancel" if run.note else "broadcast after the cancel"))
        return shortfall
