"""`kzpool payouts cancel <run-id> --reason TEXT`: close a PSBT payout run that was never broadcast.

A PSBT run (watch-only wallet, external signer) commits its run and reserve before anything is
sent and then waits for the signed transaction to reach the wallet. If that never happens (the
PSBT was lost, carries wrong amounts, the signer refused it) the run would hold the miners'
amounts in `payout:in_flight` forever. `cancel_run` closes it, under the payout-run lock (a cancel
cannot race a run or another cancel):

1. the run must exist, be a PSBT run and still be in flight (`prepared` or `psbt`); a sent run
   (confirmed or not), a cancelled or failed one, and a sendmany run (the reconciliation of
   `kzpool payouts run` resolves those, after `in_doubt_grace_s`) are refused, each by a named
   error;
2. the wallet's word (`Reconciler.broadcast_evidence`, the same lookups reconciliation makes):
   the wallet must not know the run's txid (in the mempool, in a block, or conflicted), and every
   coin the PSBT spends must still be unspent, mempool included (a fee bump of the PSBT, which
   has another txid, or any other spend of those coins shows there). No answer refuses too:
   "unknown" is never "never broadcast". The coins come from the run's PSBT file; without it the
   operator must say `--psbt-lost` and only the txid is checked;
3. the wallet unlocks the coins walletcreatefundedpsbt locked (those still locked);
4. the PSBT file is renamed `<label>.psbt.cancelled` (kept as evidence, out of `*.psbt`);
5. COMMIT, one transaction: the reserve reversed exactly (`payout:<run>:cancelled`: in_flight
   back to each miner's available balance, commission included; memo: reason, operator, time,
   evidence), status `cancelled`, note `cancelled by <operator>: <reason>`, the file's new path;
6. audit `payout` / `run_cancelled` with the operator, reason, time, txid and the evidence.

Every step before the commit can be repeated: a cancel that dies part-way leaves the run open,
and running the same command again finishes it (coins already unlocked are skipped, a file
already moved is found under its new name). Only the commit changes money, once (the posting's
ref is its idempotency key). `crash(step)` is called after "verified", "unlocked", "moved" and
"committed" so tests can kill the cancel there.

A PSBT signed before the cancel stays valid while its coins are unspent; the cancel cannot undo
a signature. Reconciliation therefore keeps asking the wallet for every cancelled PSBT run's
txid, and books a late broadcast as sent (docs/payouts.md, "Cancelling a PSBT run").
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from compliance import audit_events
from pool.db import Database
from pool.node_rpc import NodeError

from .ledger import AuditSink, Ledger
from .reconcile import BroadcastEvidence, Reconciler, cancelled_path, psbt_path
from .run_lock import payout_run_lock
from .run_store import CANCELLED, FAILED, PREPARED, PSBT, SENT, RunStore, StoredRun
from .settings import PayoutSettings
from .wallet_rpc import Outpoint, WalletReplyError, WalletRpc, psbt_inputs, psbt_txid

log = logging.getLogger("kzpool.payouts.cancel")
MAX_REASON = 500


class CancelRefused(RuntimeError):
    """The run was not cancelled; `code` names why (the CLI prints it)."""
    code = "cancel_refused"


class RunNotFound(CancelRefused):
    code = "run_not_found"


class RunAlreadySent(CancelRefused):
    code = "run_already_sent"


class RunAlreadyClosed(CancelRefused):
    """Cancelled (by an operator or reconciliation) or failed (the wallet refused it)."""
    code = "run_already_closed"


class NotAPsbtRun(CancelRefused):
    code = "not_a_psbt_run"


class TransactionKnown(CancelRefused):
    code = "transaction_known"


class InputsSpent(CancelRefused):
    code = "inputs_spent"


class PsbtUnavailable(CancelRefused):
    code = "psbt_unavailable"


class PsbtMismatch(CancelRefused):
    code = "psbt_mismatch"


class WalletUnavailable(CancelRefused):
    code = "wallet_unavailable"


class BadReason(CancelRefused):
    code = "reason_required"


@dataclass
class CancelResult:
    run_id: str
    total_sats: int
    txid: str | None
    operator: str
    reason: str
    cancelled_us: int
    evidence: str                                     # what the cancel rested on, one line
    unlocked: list[Outpoint] = field(default_factory=list)
    psbt_path: str | None = None
    items: dict[str, int] = field(default_factory=dict)      # login -> sats back on its balance


async def cancel_run(db: Database, ledger: Ledger, wallet: WalletRpc, settings: PayoutSettings, run_id: str,
                     reason: str, operator: str, *, psbt_lost: bool = False, audit: AuditSink | None = None,
                     clock: Callable[[], float] = time.time,
                     crash: Callable[[str], None] = lambda step: None) -> CancelResult:
    """Cancel PSBT run `run_id` (see the module docstring); raises a `CancelRefused` subclass, or
    `RunLocked` when a payout run or another cancel holds the lock."""
    reason = " ".join(reason.split())
    if not reason:
        raise BadReason("a cancel needs a reason (--reason TEXT): it goes to the run, the ledger and the audit log")
    if len(reason) > MAX_REASON:
        raise BadReason(f"the reason is {len(reason)} characters; at most {MAX_REASON}")

    def audit_payout(action: str, subject: str, **details: Any) -> None:
        if audit is not None:
            audit(audit_events.PAYOUT, audit_events.payout(action, subject, **details))

    store = RunStore(db, ledger, clock)
    reconciler = Reconciler(store, wallet, settings, audit_payout, clock)
    async with payout_run_lock(db):
        run = await store.run(run_id)
        _check_state(run_id, run)
        assert run is not None
        txid, inputs, path = _psbt_of(settings, run, psbt_lost)
        try:
            evidence = await reconciler.broadcast_evidence(txid, inputs)
        except (NodeError, WalletReplyError) as exc:
            raise WalletUnavailable(f"payout run {run.id}: the wallet {wallet.name} did not answer ({exc}); "
                                    "a cancel needs its word that the transaction was never broadcast") from exc
        _check_evidence(run, evidence)
        crash("verified")
        try:
            unlocked = await wallet.unlock(inputs) if inputs else []
        except (NodeError, WalletReplyError) as exc:
            raise WalletUnavailable(f"payout run {run.id}: unlocking its coins failed ({exc}); nothing was "
                                    "changed, run the cancel again") from exc
        crash("unlocked")
        new_path = _move_aside(path)
        crash("moved")
        now = clock()
        cancelled_us = round(now * 1e6)
        summary = _evidence_line(evidence, txid)
        memo = {"operator": operator, "cancelled_us": cancelled_us, "evidence": summary,
                "unlocked": [f"{t}:{v}" for t, v in unlocked]}
        posted = await store.cancel(run, CANCELLED, f"cancelled by {operator}: {reason}", memo=memo,
                                    psbt_path=str(new_path) if new_path else None)
        if not posted:          # cannot happen under the lock after the state check; say so if it does
            raise RunAlreadyClosed(f"payout run {run.id} was closed while this cancel ran")
        crash("committed")
    cancelled_at = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
    log.warning("event=payout_run_cancelled run=%s operator=%s total_sats=%d txid=%s evidence=%r reason=%r",
                run.id, operator, run.total_sats, txid or "-", summary, reason)
    audit_payout("run_cancelled", run.id, reason=reason, operator=operator, cancelled_at=cancelled_at,
                 method=run.method, txid=txid, total_sats=run.total_sats, evidence=summary,
                 inputs_checked=evidence.inputs_checked, unlocked=memo["unlocked"],
                 psbt_path=str(new_path) if new_path else None,
                 items=[{"login": i.login, "licence_no": i.licence_no, "amount_sats": i.amount_sats}
                        for i in run.items])
    items: dict[str, int] = {}
    for item in run.items:
        items[item.login] = items.get(item.login, 0) + item.amount_sats
    return CancelResult(run.id, run.total_sats, txid, operator, reason, cancelled_us, summary, unlocked,
                        str(new_path) if new_path else None, items)


def _check_state(run_id: str, run: StoredRun | None) -> None:
    if run is None:
        raise RunNotFound(f"no payout run {run_id!r}")
    if run.status == SENT:
        raise RunAlreadySent(f"payout run {run.id} was sent (transaction {run.txid}); a sent run cannot be "
                             "cancelled")
    if run.status in (CANCELLED, FAILED):
        raise RunAlreadyClosed(f"payout run {run.id} is already {run.status}"
                               f"{': ' + run.note if run.note else ''}")
    if run.method != "psbt":
        raise NotAPsbtRun(f"payout run {run.id} is a {run.method} run ({run.status}): `kzpool payouts run` "
                          "reconciles it through the wallet (marked sent if the wallet has it, cancelled once "
                          "payouts.in_doubt_grace_s has passed without it)")
    if run.status not in (PREPARED, PSBT):
        raise CancelRefused(f"payout run {run.id} is {run.status!r}: only runs in flight can be cancelled")


def _psbt_of(settings: PayoutSettings, run: StoredRun, psbt_lost: bool
             ) -> tuple[str | None, list[Outpoint], Path | None]:
    """(txid, the coins it spends, the file) of the run's PSBT, read from the file the run wrote
    (or where an interrupted cancel moved it)."""
    candidates = [Path(run.psbt_path)] if run.psbt_path else []
    candidates.append(psbt_path(settings, run))
    candidates += [cancelled_path(p) for p in list(candidates) if not p.name.endswith(".cancelled")]
    path = next((p for p in candidates if p.is_file()), None)
    if path is not None:
        text = path.read_text().strip()
        try:
            txid, inputs = psbt_txid(text), psbt_inputs(text)
        except (ValueError, WalletReplyError) as exc:
            raise PsbtUnavailable(f"payout run {run.id}: {path} is not a readable PSBT ({exc})") from exc
        if run.txid and txid != run.txid:
            raise PsbtMismatch(f"payout run {run.id}: {path} holds transaction {txid}, the run recorded {run.txid}")
        return txid, inputs, path
    if run.status == PREPARED:
        # Recorded neither a txid nor a file: the PSBT was never written, nothing exists to sign
        # (reconciliation cancels these too, at the next run).
        return None, [], None
    if psbt_lost:
        return run.txid, [], None
    raise PsbtUnavailable(
        f"payout run {run.id}: its PSBT file ({run.psbt_path}) is gone, so the coins it spends cannot be checked; "
        "if it is lost everywhere, cancel with --psbt-lost (the wallet is then asked about the txid only)")


def _check_evidence(run: StoredRun, evidence: BroadcastEvidence) -> None:
    if evidence.tx is not None:
        state = ("conflicted" if evidence.tx.confirmations < 0 else "in the mempool"
                 if evidence.tx.confirmations == 0 else f"{evidence.tx.confirmations} confirmation(s)")
        raise TransactionKnown(f"payout run {run.id}: the wallet knows its transaction {evidence.tx.txid} ({state}): "
                               "it was broadcast; `kzpool payouts run` records it as sent")
    if evidence.spent:
        coins = ", ".join(f"{t}:{v}" for t, v in evidence.spent)
        raise InputsSpent(f"payout run {run.id}: coin(s) its PSBT spends are spent already ({coins}): its transaction, "
                          "a fee bump of it or another spend of them was broadcast; find it in the wallet first")


def _evidence_line(evidence: BroadcastEvidence, txid: str | None) -> str:
    if txid is None:
        return "PSBT never written; no transaction recorded"
    if not evidence.inputs_checked:
        return f"wallet does not know {txid}; PSBT lost, coins not checked (--psbt-lost)"
    return f"wallet does not know {txid}; {evidence.inputs_checked} coin(s) unspent, mempool included"


def _move_aside(path: Path | None) -> Path | None:
    """Rename the PSBT to `<name>.cancelled` (durably); an already moved one stays where it is."""
    if path is None or path.name.endswith(".cancelled"):
        return path
    target = cancelled_path(path)
    os.replace(path, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return target
