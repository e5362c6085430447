"""`kzpool payouts run`: pay every licensed miner's balance over the threshold, exactly once.

Order of a run (under `payout_run_lock`, one run at a time):
1. reconcile runs a previous run left in flight, through the wallet: a "prepared" run is looked up
   by its label (the sendmany comment): found -> marked sent; absent and older than
   `in_doubt_grace_s` -> cancelled (its reserve returns to the miners); absent and younger -> this
   run stops ("in doubt"), since that sendmany may still be executing. A "psbt" run is marked
   sent once the wallet knows its txid.
2. pool-wide gates (location attestation, accreditation): a reason stops the run here.
3. each miner's licence: invalid -> its available balance is frozen with the reason; valid again
   -> its frozen balance is released.
4. plan: every payable balance >= threshold, split wallet / exchange deposit.
5. prepare: the run, its items and the reserve posting are COMMITTED before anything is sent.
6. send (sendmany with the run's label as comment, one transaction) or write the PSBT.
7. commit: the txid, the payment and network-fee postings.
A crash between 5 and 7 leaves a prepared run that step 1 of the next run resolves; a balance is
moved off `available` once, at 5, and only a positive "the wallet has no such transaction" gives
it back: nothing is paid twice, nothing is forgotten. `crash(step)` is called after steps 5
("prepared"), 6 ("sent") and 7 ("committed") so tests can kill the run there.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from compliance import audit_events
from compliance.standing import KZ_TIME
from pool.db import Database
from pool.node_rpc import NodeError, RpcError

from .gates import LicenceGate, MinerStanding, PayoutGate, blocking_reason
from .ledger import (AVAILABLE, FROZEN, AuditSink, Balance, Ledger, Line, Posting, miner_account,
                     parse_miner_account)
from .models import ExchangeDeposit
from .payout_plan import Deposit, PlannedItem, plan_item
from .reconcile import ReconcileMismatch, Reconciler, RunInDoubt, psbt_path
from .run_lock import payout_run_lock
from .run_store import FAILED, RunStore, StoredRun
from .settings import PayoutSettings
from .wallet_rpc import WalletReplyError, WalletRpc

log = logging.getLogger("kzpool.payouts.run")


@dataclass
class RunResult:
    status: str            # blocked | in_doubt | mismatch | wallet_unreachable | nothing | dry_run | sent
                           # | psbt | failed
    run_id: str | None = None
    txid: str | None = None
    reason: str = ""
    psbt_path: str | None = None
    items: list[PlannedItem] = field(default_factory=list)
    frozen: dict[str, tuple[int, str]] = field(default_factory=dict)    # login -> (sats, reason)
    released: dict[str, int] = field(default_factory=dict)
    reconciled: dict[str, str] = field(default_factory=dict)            # run id -> status now


class PayoutRunner:
    def __init__(self, db: Database, ledger: Ledger, wallet: WalletRpc, licences: LicenceGate,
                 settings: PayoutSettings, *, gates: Sequence[PayoutGate] = (), audit: AuditSink | None = None,
                 clock: Callable[[], float] = time.time, crash: Callable[[str], None] = lambda step: None) -> None:
        self.db, self.ledger, self.wallet, self.licences = db, ledger, wallet, licences
        self.settings, self.gates, self.audit, self.clock, self.crash = settings, gates, audit, clock, crash
        self.store = RunStore(db, ledger, clock)
        self.reconciler = Reconciler(self.store, wallet, settings, self._audit, clock)

    def _audit(self, action: str, run_id: str, **details: Any) -> None:
        log.info("event=payout_%s run=%s %s", action, run_id,
                 " ".join(f"{k}={v}" for k, v in details.items() if isinstance(v, (str, int))))
        if self.audit is not None:
            self.audit(audit_events.PAYOUT, audit_events.payout(action, run_id, **details))

    async def run(self, dry_run: bool = False) -> RunResult:
        async with payout_run_lock(self.db):
            try:
                reconciled = await self.reconciler.reconcile(dry_run)
            except RunInDoubt as exc:
                return RunResult("in_doubt", reason=str(exc))
            except ReconcileMismatch as exc:
                self._audit("run_mismatch", "-", reason=str(exc))
                return RunResult("mismatch", reason=str(exc))
            except (NodeError, WalletReplyError) as exc:
                return RunResult("in_doubt", reason=f"wallet {self.wallet.name}: {exc}")
            reason = await blocking_reason(self.gates)
            if reason:
                self._audit("run_blocked", "-", reason=reason, dry_run=dry_run)
                return RunResult("blocked", reason=reason, reconciled=reconciled)
            result = await self._pay(dry_run)
            result.reconciled = reconciled
            return result

    async def _pay(self, dry_run: bool) -> RunResult:
        standings, frozen, released = await self._apply_licences(dry_run)
        planned = await self._plan(standings, released if dry_run else {})
        base: dict[str, Any] = dict(items=planned, frozen=frozen, released={k: b.amount for k, b in released.items()})
        if dry_run:
            return RunResult("dry_run", **base)
        if not planned:
            return RunResult("nothing", **base)
        try:
            await self.wallet.balance_sats()
        except (NodeError, WalletReplyError) as exc:
            return RunResult("wallet_unreachable", reason=f"wallet {self.wallet.name}: {exc}", **base)
        run_id = uuid.uuid4().hex
        run = await self.store.prepare(run_id, f"kzpool-payout-{run_id}", self.settings.method, planned)
        if run is None:
            return RunResult("nothing", **base)
        self._audit("run_prepared", run.id, label=run.label, method=run.method, total_sats=run.total_sats,
                    items=[_item_payload(i) for i in run.items])
        self.crash("prepared")
        if run.method == "psbt":
            return await self._write_psbt(run, base)
        return await self._send(run, base)

    # -- licences -------------------------------------------------------------------------------
    async def _apply_licences(self, dry_run: bool
                              ) -> tuple[dict[str, MinerStanding], dict[str, tuple[int, str]], dict[str, Balance]]:
        """Judge every miner holding money; freeze the invalid, release the valid again."""
        balances = await self.ledger.balances("miner:")
        logins = sorted({m[0] for account, b in balances.items()
                         if b.amount > 0 and (m := parse_miner_account(account)) and m[1] in (AVAILABLE, FROZEN)})
        standings: dict[str, MinerStanding] = {}
        frozen: dict[str, tuple[int, str]] = {}
        released: dict[str, Balance] = {}
        for login in logins:
            standing = standings[login] = await self.licences.judge(login)
            available = balances.get(miner_account(login, AVAILABLE), ZERO)
            held = balances.get(miner_account(login, FROZEN), ZERO)
            if not standing.payable and available.amount > 0:
                frozen[login] = (available.amount, standing.reason)
                if not dry_run:
                    await self._move(login, AVAILABLE, FROZEN, "frozen", standing)
            elif standing.payable and held.amount > 0:
                released[login] = held
                if not dry_run:
                    await self._move(login, FROZEN, AVAILABLE, "unfrozen", standing)
        return standings, frozen, released

    async def _move(self, login: str, source: str, target: str, action: str, standing: MinerStanding) -> None:
        """Move a miner's whole `source` balance (and its commission) to `target`."""
        src, dst = miner_account(login, source), miner_account(login, target)
        async with self.ledger.write() as writer:
            balance = (await writer.balances(src)).get(src, ZERO)
            if balance.amount <= 0:
                return
            await writer.post(Posting(f"{action}:{login}:{uuid.uuid4().hex}", action, (
                Line(src, -balance.amount, -balance.commission), Line(dst, balance.amount, balance.commission)),
                {"login": login, "licence_no": standing.licence_no, "reason": standing.reason}))
        self._audit(action, "-", login=login, licence_no=standing.licence_no, amount_sats=balance.amount,
                    reason=standing.reason)

    # -- planning -------------------------------------------------------------------------------
    async def _plan(self, standings: dict[str, MinerStanding], not_yet_released: dict[str, Balance]
                    ) -> list[PlannedItem]:
        """Items for every payable balance >= threshold. A dry run adds what it would release."""
        s = self.settings
        balances = await self.ledger.balances("miner:")
        amounts: dict[str, Balance] = {}
        for login, standing in sorted(standings.items()):
            available = balances.get(miner_account(login, AVAILABLE), ZERO)
            extra = not_yet_released.get(login, ZERO)
            total = Balance(available.amount + extra.amount, available.commission + extra.commission)
            if standing.payable and total.amount >= s.threshold_sats:
                amounts[login] = total
        async with self.db.engine.connect() as conn:
            deposits = {d.login: Deposit(d.exchange_id, d.address, d.share_bps) for d in await conn.execute(
                select(ExchangeDeposit).where(ExchangeDeposit.login.in_(sorted(amounts))))}
        min_share = s.min_share_bps(self.clock_kz().year)
        items = []
        for login, total in amounts.items():
            st = standings[login]
            assert st.licence_issued is not None
            items.append(plan_item(login, st.licence_no, st.licence_issued, total.amount, total.commission,
                                   st.payout_address, deposits.get(login), s.eligible_exchanges, min_share,
                                   s.dust_sats))
        return items

    def clock_kz(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), KZ_TIME)

    # -- sending --------------------------------------------------------------------------------
    async def _send(self, run: StoredRun, base: dict[str, Any]) -> RunResult:
        try:
            txid = await self.wallet.sendmany(run.outputs, run.label, self.settings.conf_target)
        except RpcError as exc:
            # The wallet answered no: nothing was sent, the reserve goes back.
            await self.store.cancel(run, FAILED, f"wallet refused: {exc}")
            self._audit("run_failed", run.id, reason=str(exc), total_sats=run.total_sats)
            return RunResult("failed", run.id, reason=str(exc), **base)
        except (NodeError, WalletReplyError) as exc:
            self._audit("run_in_doubt", run.id, reason=str(exc))
            return RunResult("in_doubt", run.id, reason=f"sendmany outcome unknown: {exc}", **base)
        self.crash("sent")
        fee = await self._fee(txid)
        await self.store.mark_sent(run, txid, fee)
        self._audit("run_sent", run.id, txid=txid, total_sats=run.total_sats, network_fee_sats=fee)
        self.crash("committed")
        return RunResult("sent", run.id, txid, **base)

    async def _fee(self, txid: str) -> int:
        try:
            tx = await self.wallet.transaction(txid)
        except (NodeError, WalletReplyError) as exc:
            log.warning("event=payout_fee_unknown txid=%s error=%s", txid, exc)
            return 0
        return tx.fee_sats if tx is not None else 0

    async def _write_psbt(self, run: StoredRun, base: dict[str, Any]) -> RunResult:
        try:
            funded = await self.wallet.create_funded_psbt(run.outputs, self.settings.conf_target)
        except RpcError as exc:
            await self.store.cancel(run, FAILED, f"wallet refused: {exc}")
            self._audit("run_failed", run.id, reason=str(exc), total_sats=run.total_sats)
            return RunResult("failed", run.id, reason=str(exc), **base)
        except (NodeError, WalletReplyError) as exc:
            return RunResult("in_doubt", run.id, reason=f"walletcreatefundedpsbt outcome unknown: {exc}", **base)
        path = psbt_path(self.settings, run)
        _write_durably(path, funded.psbt + "\n")
        self.crash("sent")
        await self.store.mark_psbt(run, funded.txid, str(path), funded.fee_sats)
        self._audit("psbt_written", run.id, path=str(path), txid=funded.txid, total_sats=run.total_sats)
        self.crash("committed")
        return RunResult("psbt", run.id, funded.txid, psbt_path=str(path), **base)

ZERO = Balance()


def _item_payload(item: PlannedItem) -> dict[str, Any]:
    return {"login": item.login, "licence_no": item.licence_no, "amount_sats": item.amount_sats,
            "commission_sats": item.commission_sats, "wallet_sats": item.wallet_sats,
            "exchange_id": item.exchange_id, "exchange_sats": item.exchange_sats,
            "exchange_share_bps": item.exchange_share_bps}


def _write_durably(path: Path, text: str) -> None:
    """Write, fsync, rename into place, fsync the directory: the file exists whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
