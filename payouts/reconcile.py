"""Reconciling payout runs a previous run left in flight, through the wallet.

- "prepared", sendmany: looked up by the run's label (the sendmany comment) in the wallet's
  newest `reconcile_scan` transactions. Found: marked sent (after checking it pays exactly the
  run's outputs; a mismatch stops everything for the operator). Not found and older than
  `in_doubt_grace_s`: cancelled, its reserve back on the miners' balances. Not found and younger:
  `RunInDoubt`, since that sendmany may still be executing in the wallet.
- "prepared", psbt: the PSBT file exists (written, then the process died): recorded; absent:
  nothing can ever be signed, cancelled at once.
- "psbt": marked sent once the wallet knows its txid (the cold-signed transaction was broadcast).
- "cancelled" by an operator (`kzpool payouts cancel`, a PSBT run: it has a txid): a signed copy
  of a cancelled PSBT stays valid while its coins are unspent, so every reconciliation asks the
  wallet for it again; found (0 or more confirmations) -> booked as sent after all, the amounts
  taken back from the miners and the rest to `pool:deficit` (audit `cancelled_run_broadcast`,
  an error in the log).

`broadcast_evidence(txid, inputs)` is the wallet's word a cancel rests on: the transaction as the
wallet knows it (None: unknown), and which of the PSBT's coins are no longer unspent (spent by
this transaction, a fee bump of it, or anything else, in a block or the mempool).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .run_store import CANCELLED, PSBT, SENT, RunStore, StoredRun
from .settings import PayoutSettings
from .wallet_rpc import Outpoint, WalletRpc, WalletTx, psbt_txid

log = logging.getLogger("kzpool.payouts.reconcile")
CANCELLED_SUFFIX = ".cancelled"


class RunInDoubt(RuntimeError):
    """A previous run may still be executing in the wallet; try again later."""


class ReconcileMismatch(RuntimeError):
    """The wallet's transaction for a run does not pay what the run says: stop for the operator."""


def psbt_path(settings: PayoutSettings, run: StoredRun) -> Path:
    return Path(settings.psbt_dir) / f"{run.label}.psbt"


def cancelled_path(path: Path) -> Path:
    """Where `kzpool payouts cancel` moves a PSBT file: out of the `*.psbt` a signer picks up."""
    return path.with_name(path.name + CANCELLED_SUFFIX)


@dataclass(frozen=True, slots=True)
class BroadcastEvidence:
    txid: str | None
    tx: WalletTx | None                                      # the wallet's record of the txid
    spent: list[Outpoint] = field(default_factory=list)      # inputs no longer unspent
    inputs_checked: int = 0

    @property
    def never_broadcast(self) -> bool:
        return self.tx is None and not self.spent


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
        if not dry_run:
            out.update(await self._watch_cancelled())
        return out

    async def broadcast_evidence(self, txid: str | None, inputs: Sequence[Outpoint]) -> BroadcastEvidence:
        """What the wallet and its node say about a PSBT's transaction; raises NodeError /
        WalletReplyError when they do not answer (unknown is never "never broadcast")."""
        tx = await self.wallet.transaction(txid) if txid else None
        spent = [o for o in inputs if not await self.wallet.output_unspent(*o)]
        return BroadcastEvidence(txid, tx, spent, len(inputs))

    async def _watch_cancelled(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for run in await self.store.runs([CANCELLED]):
            if run.method != "psbt" or not run.txid:
                continue            # never written, or a sendmany the wallet never had: nothing to sign
            tx = await self.wallet.transaction(run.txid)
            if tx is None or tx.confirmations < 0:
                continue
            if tx.sent != run.outputs:
                raise ReconcileMismatch(f"cancelled payout run {run.id}: wallet transaction {tx.txid} pays {tx.sent}, "
                                        f"the run said {run.outputs}")
            shortfall = await self.store.mark_sent_after_cancel(
                run, tx.txid, tx.fee_sats, tx.time * 1_000_000 if tx.time else None)
            if shortfall is None:
                continue
            log.error("event=payout_cancelled_run_broadcast run=%s txid=%s total_sats=%d deficit_sats=%d: a cancelled "
                      "PSBT was signed and broadcast anyway; booked as sent, the miners' balances reduced, the rest "
                      "is pool:deficit", run.id, tx.txid, run.total_sats, sum(shortfall.values()))
            self._audit("cancelled_run_broadcast", run.id, txid=tx.txid, total_sats=run.total_sats,
                        network_fee_sats=tx.fee_sats, deficit_sats=sum(shortfall.values()), shortfall=shortfall)
            out[run.id] = SENT
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
        if not path.exists() and cancelled_path(path).exists():
            path = cancelled_path(path)     # a cancel moved it, then died before its commit
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
