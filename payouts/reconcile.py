"""Reconciling payout runs a previous run left in flight, through the wallet.

- "prepared", sendmany: looked up by the run's label (the sendmany comment) in the wallet's
  newest `reconcile_scan` transactions. Found: marked sent (after checking it pays exactly the
  run's outputs; a mismatch stops everything for the operator). Not found and older than
  `in_doubt_grace_s`: cancelled, its reserve back on the miners' balances. Not found and younger:
  `RunInDoubt`, since that sendmany may still be executing in the wallet.
- "prepared", psbt: the PSBT file exists (written, then the process died): recorded; absent:
  nothing can ever be signed, cancelled at once.
- "psbt": marked sent once the wallet knows its txid (the cold-signed transaction was broadcast).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .run_store import CANCELLED, PSBT, SENT, RunStore, StoredRun
from .settings import PayoutSettings
from .wallet_rpc import WalletRpc, WalletTx, psbt_txid


class RunInDoubt(RuntimeError):
    """A previous run may still be executing in the wallet; try again later."""


class ReconcileMismatch(RuntimeError):
    """The wallet's transaction for a run does not pay what the run says: stop for the operator."""


def psbt_path(settings: PayoutSettings, run: StoredRun) -> Path:
    return Path(settings.psbt_dir) / f"{run.label}.psbt"


class Reconciler:
    def __init__(self, store: RunStore, wallet: WalletRpc, settings: PayoutSettings,
                 audit: Callable[..., None], clock: Callable[[], float] = time.time) -> None:
        self.store, self.wallet, self.settings, self._audit, self.clock = store, wallet, settings, audit, clock

    async def reconcile(self, dry_run: bool = False) -> dict[str, str]:
        out: dict[str, str] = {}
        for run in await self.store.runs():
            if dry_run:
                out[run.id] = run.status
            elif run.status == PSBT:
                out[run.id] = await self._reconcile_psbt(run)
            elif run.method == "psbt":
                out[run.id] = await self._reconcile_unwritten_psbt(run)
            else:
                out[run.id] = await self._reconcile_prepared(run)
        return out

    async def _reconcile_prepared(self, run: StoredRun) -> str:
        tx = await self.wallet.find_by_comment(run.label, self.settings.reconcile_scan)
        if tx is not None:
            return await self._found(run, tx)
        age_s = self.clock() - run.created_us / 1e6
        if age_s < self.settings.in_doubt_grace_s:
            raise RunInDoubt(f"payout run {run.id} was prepared {age_s:.0f} s ago and is not in the wallet yet; "
                             f"its sendmany may still be running: retry after {self.settings.in_doubt_grace_s:g} s")
        await self.store.cancel(run, CANCELLED, "not in the wallet: never sent")
        self._audit("run_cancelled", run.id, reason="not in the wallet after the grace time",
                    total_sats=run.total_sats)
        return CANCELLED

    async def _reconcile_psbt(self, run: StoredRun) -> str:
        tx = await self.wallet.transaction(run.txid or "")
        if tx is None or tx.confirmations < 0:
            return PSBT
        return await self._found(run, tx)

    async def _reconcile_unwritten_psbt(self, run: StoredRun) -> str:
        path = psbt_path(self.settings, run)
        if path.exists():           # written, then the process died before recording it
            txid = psbt_txid(path.read_text().strip())
            await self.store.mark_psbt(run, txid, str(path), 0)
            self._audit("psbt_written", run.id, path=str(path), txid=txid, reconciled=True)
            return PSBT
        await self.store.cancel(run, CANCELLED, "PSBT never written")
        self._audit("run_cancelled", run.id, reason="PSBT never written", total_sats=run.total_sats)
        return CANCELLED

    async def _found(self, run: StoredRun, tx: WalletTx) -> str:
        if tx.sent != run.outputs:
            raise ReconcileMismatch(f"payout run {run.id}: wallet transaction {tx.txid} pays {tx.sent}, "
                                    f"the run says {run.outputs}")
        # The report dates a distribution by when the wallet got the transaction, not by this run.
        await self.store.mark_sent(run, tx.txid, tx.fee_sats, tx.time * 1_000_000 if tx.time else None)
        self._audit("run_sent", run.id, txid=tx.txid, total_sats=run.total_sats, network_fee_sats=tx.fee_sats,
                    reconciled=True)
        return SENT
