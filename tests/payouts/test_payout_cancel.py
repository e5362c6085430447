"""`kzpool payouts cancel`: a PSBT run never broadcast is closed with its amounts back on the
miners' balances, exactly; a run the wallet (or the chain, through the PSBT's coins) knows about,
a sent run, a closed run and a sendmany run are refused by name; a cancel interrupted at any step
finishes when run again; a cancelled PSBT broadcast anyway is booked when the wallet sees it."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from compliance.pii import load_pii_box
from compliance.registry import LicenceRegistry
from payouts.cancel import (BadReason, InputsSpent, NotAPsbtRun, PsbtUnavailable, RunAlreadyClosed, RunAlreadySent,
                            RunNotFound, TransactionKnown, WalletUnavailable, cancel_run)
from payouts.cli import add_subcommands
from payouts.gates import LicenceGate
from payouts.ledger import (CHAIN_PAYMENTS, PAYOUT_IN_FLIGHT, POOL_DEFICIT, Balance, Ledger, miner_account)
from payouts.run_lock import RunLocked, payout_run_lock
from payouts.run_store import RunStore
from payouts.runner import PayoutRunner
from payouts.settings import PayoutSettings
from payouts.wallet_rpc import WalletRpc
from pool.config import load_config
from pool.db import Database

from payout_fixtures import (DATACENTRES_CSV, audit_records, clock, ledger, licences_csv, payout_db,  # noqa: F401
                             regtest_address, seeded_registry, wallet)
from pool_overrides import test_overrides
from test_payout_crash import SimulatedCrash
from test_payouts_cli import ConfigWithPayouts
from test_payout_run import credit
from wallet_standin import WalletStandin

EXPECTED = {regtest_address("alice"): 300_000, regtest_address("bolat"): 450_000}


class Pool:
    """One test's pool: runner and cancel share the database, ledger, wallet client and audit list."""

    def __init__(self, db: Database, ledger: Ledger, client: WalletRpc, registry: LicenceRegistry, clock,
                 audit: list, psbt_dir: Path) -> None:
        self.db, self.ledger, self.client, self.registry, self.clock = db, ledger, client, registry, clock
        self.audit_records = audit
        self.psbt_dir = psbt_dir

    def settings(self, method: str = "psbt") -> PayoutSettings:
        return PayoutSettings(threshold_sats=100_000, in_doubt_grace_s=600, method=method,
                              psbt_dir=str(self.psbt_dir)).validate()

    def audit(self, kind: str, payload: dict[str, Any]) -> None:
        self.audit_records.append((kind, payload))

    def runner(self, method: str = "psbt", crash=lambda step: None) -> PayoutRunner:
        return PayoutRunner(self.db, Ledger(self.db, audit=self.audit, clock=self.clock), self.client,
                            LicenceGate(self.registry, "regtest", self.clock.now), self.settings(method),
                            audit=self.audit, clock=self.clock, crash=crash)

    async def cancel(self, run_id: str, reason: str = "signer refused: wrong amounts", *, crash_at: str | None = None,
                     client: WalletRpc | None = None, **kw: Any):
        def crash(step: str) -> None:
            if step == crash_at:
                raise SimulatedCrash(step)
        return await cancel_run(self.db, Ledger(self.db, audit=self.audit, clock=self.clock), client or self.client,
                                self.settings(), run_id, reason, "aigerim", audit=self.audit, clock=self.clock,
                                crash=crash, **kw)

    def payouts(self) -> list[dict[str, Any]]:
        return [p for k, p in self.audit_records if k == "payout"]


@pytest.fixture
async def pool(payout_db: Database, ledger: Ledger, clock, wallet: WalletStandin, audit_records, tmp_path: Path):
    registry = await seeded_registry(payout_db, ("alice", "bolat"), clock)
    client = WalletRpc(wallet.url, user=wallet.user, password=wallet.password, timeout_s=5)
    yield Pool(payout_db, ledger, client, registry, clock, audit_records, tmp_path / "psbt")
    await client.close()


async def credit_both(ledger: Ledger) -> dict[str, Balance]:
    await credit(ledger, "alice", 300_000, 3_001)
    await credit(ledger, "bolat", 450_000, 4_545)
    return await ledger.balances()


async def assert_balanced(ledger: Ledger) -> None:
    balances = await ledger.balances()
    assert sum(b.amount for b in balances.values()) == 0 and await ledger.unbalanced() == []


async def test_cancel_restores_balances_exactly_and_the_next_run_pays_them(pool: Pool, ledger, wallet, payout_db):
    before = await credit_both(ledger)
    run = await pool.runner().run()
    assert run.status == "psbt" and (await ledger.balances())[PAYOUT_IN_FLIGHT].amount == 750_000
    assert wallet.locked_sats > 0 and len(wallet.locks) == 1
    pool.clock.advance(days=3)                               # the signer never signed

    result = await pool.cancel(run.run_id)
    assert result.items == {"alice": 300_000, "bolat": 450_000} and result.total_sats == 750_000
    after = await ledger.balances()
    for login in ("alice", "bolat"):                         # amount and commission, to the satoshi
        assert after[miner_account(login, "available")] == before[miner_account(login, "available")]
    assert after[PAYOUT_IN_FLIGHT] == Balance(0, 0)
    await assert_balanced(ledger)
    reversal = await ledger.lines(f"payout:{run.run_id}:cancelled")
    reserve = await ledger.lines(f"payout:{run.run_id}:reserve")
    assert sorted((l.account, -l.amount, -l.commission) for l in reversal) == \
        sorted((l.account, l.amount, l.commission) for l in reserve)
    # The wallet's coins are free again, the PSBT file is out of *.psbt, kept as evidence.
    assert wallet.locks == {} and wallet.locked_sats == 0 and result.unlocked == [next(iter(wallet.coins))]
    assert list(pool.psbt_dir.glob("*.psbt")) == [] and Path(result.psbt_path).name.endswith(".psbt.cancelled")
    (stored,) = await RunStore(payout_db, ledger).runs(["cancelled"])
    assert stored.note == "cancelled by aigerim: signer refused: wrong amounts" and stored.psbt_path == result.psbt_path
    (record,) = [p for p in pool.payouts() if p["action"] == "run_cancelled"]
    assert record["subject"] == run.run_id and record["operator"] == "aigerim"
    assert record["reason"] == "signer refused: wrong amounts" and record["cancelled_at"].startswith("2026-06-18T07:00")
    assert record["txid"] == run.txid and record["inputs_checked"] == 1 and record["total_sats"] == 750_000
    assert [i["amount_sats"] for i in record["items"]] == [300_000, 450_000]
    (posting,) = [p for k, p in pool.audit_records if k == "ledger" and p["ref"].endswith(":cancelled")]
    assert posting["memo"]["operator"] == "aigerim" and posting["memo"]["cancelled_us"] == round(pool.clock() * 1e6)

    again = await pool.runner().run()                        # the next run pays the same amounts
    assert again.reconciled == {} and again.status == "psbt"
    assert {i.login: (i.amount_sats, i.commission_sats) for i in again.items} == {"alice": (300_000, 3_001),
                                                                                  "bolat": (450_000, 4_545)}
    wallet.sign_and_broadcast(Path(again.psbt_path).read_text().strip())
    assert (await pool.runner().run()).reconciled == {again.run_id: "sent"}
    assert wallet.paid() == EXPECTED and len(wallet.txs) == 1
    balances = await ledger.balances()
    assert balances[CHAIN_PAYMENTS].amount == 750_000 and balances[PAYOUT_IN_FLIGHT].amount == 0
    await assert_balanced(ledger)


async def test_sendmany_after_a_cancel_pays_the_same_amounts(pool: Pool, ledger, wallet):
    await credit_both(ledger)
    run = await pool.runner().run()
    await pool.cancel(run.run_id)
    sent = await pool.runner("sendmany").run()
    assert sent.status == "sent" and wallet.paid() == EXPECTED
    await assert_balanced(ledger)


async def test_refused_while_the_wallet_knows_the_transaction(pool: Pool, ledger, wallet):
    await credit_both(ledger)
    run = await pool.runner().run()
    wallet.sign_and_broadcast(Path(run.psbt_path).read_text().strip())     # in the mempool
    before = await ledger.balances()
    with pytest.raises(TransactionKnown, match="in the mempool"):
        await pool.cancel(run.run_id)
    wallet.mine(2)
    with pytest.raises(TransactionKnown, match="2 confirmation"):
        await pool.cancel(run.run_id)
    assert await ledger.balances() == before and Path(run.psbt_path).exists()
    assert "run_cancelled" not in [p["action"] for p in pool.payouts()]
    assert (await pool.runner().run()).reconciled == {run.run_id: "sent"}
    with pytest.raises(RunAlreadySent):                     # and once recorded, it is a sent run
        await pool.cancel(run.run_id)
    assert wallet.paid() == EXPECTED


async def test_refused_when_a_fee_bump_spent_the_coins(pool: Pool, ledger, wallet):
    """A replacement has another txid: the wallet does not know the run's txid, but the coins the
    PSBT spends are spent, in the mempool."""
    await credit_both(ledger)
    run = await pool.runner().run()
    wallet.broadcast_replacement(Path(run.psbt_path).read_text().strip())
    with pytest.raises(InputsSpent, match="fee bump"):
        await pool.cancel(run.run_id)
    assert (await ledger.balances())[PAYOUT_IN_FLIGHT].amount == 750_000 and wallet.locks == {}


async def test_refused_states(pool: Pool, ledger, wallet):
    await credit(ledger, "alice", 300_000)
    sent = await pool.runner("sendmany").run()
    assert sent.status == "sent"
    with pytest.raises(RunAlreadySent, match=sent.txid):
        await pool.cancel(sent.run_id)
    with pytest.raises(RunNotFound):
        await pool.cancel("0" * 32)
    await credit(ledger, "bolat", 450_000)
    with pytest.raises(SimulatedCrash):                      # a sendmany run left prepared (in doubt)
        await pool.runner("sendmany", crash=_crash_at("prepared")).run()
    (prepared,) = await RunStore(pool.db, ledger).runs()
    with pytest.raises(NotAPsbtRun, match="in_doubt_grace_s"):
        await pool.cancel(prepared.id)
    pool.clock.advance(seconds=601)
    await pool.runner("sendmany").run()                      # reconciliation cancels it, then pays
    with pytest.raises(RunAlreadyClosed, match="not in the wallet"):
        await pool.cancel(prepared.id)
    await credit(ledger, "alice", 200_000, ref="more")
    wallet.balance_sats = 1_000
    failed = await pool.runner().run()                       # the wallet refused to fund the PSBT
    assert failed.status == "failed"
    with pytest.raises(RunAlreadyClosed, match="failed"):
        await pool.cancel(failed.run_id)
    wallet.balance_sats = 10**9
    run = await pool.runner().run()
    await pool.cancel(run.run_id)
    with pytest.raises(RunAlreadyClosed, match="cancelled by aigerim"):
        await pool.cancel(run.run_id)
    with pytest.raises(BadReason, match="reason"):
        await pool.cancel(run.run_id, reason="  ")
    await assert_balanced(ledger)


def _crash_at(at: str):
    def crash(step: str) -> None:
        if step == at:
            raise SimulatedCrash(step)
    return crash


async def test_refused_while_a_run_holds_the_lock_or_the_wallet_is_away(pool: Pool, ledger, wallet):
    await credit_both(ledger)
    run = await pool.runner().run()
    async with payout_run_lock(pool.db):
        with pytest.raises(RunLocked):
            await pool.cancel(run.run_id)
    away = WalletRpc("http://127.0.0.1:9/wallet/kzpool-payouts", user=wallet.user, password=wallet.password,
                     timeout_s=2)                            # nothing listens: unknown is never "never broadcast"
    try:
        with pytest.raises(WalletUnavailable):
            await pool.cancel(run.run_id, client=away)
    finally:
        await away.close()
    assert (await ledger.balances())[PAYOUT_IN_FLIGHT].amount == 750_000 and Path(run.psbt_path).exists()


async def test_a_lost_psbt_file_needs_the_operator_to_say_so(pool: Pool, ledger, wallet):
    await credit_both(ledger)
    run = await pool.runner().run()
    Path(run.psbt_path).unlink()
    with pytest.raises(PsbtUnavailable, match="--psbt-lost"):
        await pool.cancel(run.run_id)
    result = await pool.cancel(run.run_id, psbt_lost=True)
    assert "coins not checked" in result.evidence and result.unlocked == [] and result.psbt_path is None
    assert (await ledger.balances())[miner_account("alice", "available")].amount == 300_000


async def test_a_psbt_never_written_is_cancelled_without_a_transaction(pool: Pool, ledger, wallet):
    await credit_both(ledger)
    with pytest.raises(SimulatedCrash):
        await pool.runner(crash=_crash_at("prepared")).run()
    (run,) = await RunStore(pool.db, ledger).runs()
    result = await pool.cancel(run.id)
    assert result.txid is None and result.evidence == "PSBT never written; no transaction recorded"
    await assert_balanced(ledger)


@pytest.mark.parametrize("step", ["verified", "unlocked", "moved", "committed"])
async def test_a_cancel_interrupted_at_any_step_finishes_when_run_again(pool: Pool, ledger, wallet, step):
    before = await credit_both(ledger)
    run = await pool.runner().run()
    with pytest.raises(SimulatedCrash):
        await pool.cancel(run.run_id, crash_at=step)
    if step == "committed":
        with pytest.raises(RunAlreadyClosed):
            await pool.cancel(run.run_id)
    else:
        # Nothing committed: the run is still open, and a payout run meanwhile leaves it so.
        assert (await ledger.balances())[PAYOUT_IN_FLIGHT].amount == 750_000
        assert (await pool.runner().run()).reconciled == {run.run_id: "psbt"}
        await pool.cancel(run.run_id)
    after = await ledger.balances()
    assert all(after[miner_account(m, "available")] == before[miner_account(m, "available")]
               for m in ("alice", "bolat"))
    refs = [p["ref"] for k, p in pool.audit_records if k == "ledger"]
    assert refs.count(f"payout:{run.run_id}:cancelled") == 1
    assert wallet.locks == {} and list(pool.psbt_dir.glob("*.psbt")) == []
    assert len(list(pool.psbt_dir.glob("*.psbt.cancelled"))) == 1
    again = await pool.runner("sendmany").run()
    assert again.status == "sent" and wallet.paid() == EXPECTED
    await assert_balanced(ledger)


async def test_interrupted_after_the_move_a_prepared_run_keeps_its_psbt(pool: Pool, ledger, wallet):
    """A run that died before recording its PSBT, then a cancel that died after moving the file:
    reconciliation finds the file under its new name and records the PSBT (it is not "never
    written"); the cancel run again finishes it."""
    await credit_both(ledger)
    with pytest.raises(SimulatedCrash):
        await pool.runner(crash=_crash_at("sent")).run()     # file written, run still prepared
    (run,) = await RunStore(pool.db, ledger).runs()
    with pytest.raises(SimulatedCrash):
        await pool.cancel(run.id, crash_at="moved")
    assert (await pool.runner().run()).reconciled == {run.id: "psbt"}
    result = await pool.cancel(run.id)
    assert result.txid is not None and result.psbt_path.endswith(".psbt.cancelled")
    await assert_balanced(ledger)


async def test_a_cancelled_psbt_broadcast_anyway_is_booked_when_the_wallet_sees_it(pool: Pool, ledger, wallet,
                                                                                   payout_db):
    await credit_both(ledger)
    run = await pool.runner().run()
    psbt = Path(run.psbt_path).read_text().strip()
    await pool.cancel(run.run_id)
    wallet.sign_and_broadcast(psbt)       # a copy signed before the cancel: its coin is still unspent
    result = await pool.runner("sendmany").run()
    assert result.reconciled == {run.run_id: "sent"} and result.status == "nothing" and wallet.paid() == EXPECTED
    balances = await ledger.balances()
    assert balances[miner_account("alice", "available")] == Balance(0, 0)
    assert balances.get(POOL_DEFICIT, Balance()).amount == 0 and balances[CHAIN_PAYMENTS].amount == 750_000
    (sent,) = await RunStore(payout_db, ledger).runs(["sent"])
    assert sent.id == run.run_id and sent.txid == run.txid          # the distribution report shows it
    (record,) = [p for p in pool.payouts() if p["action"] == "cancelled_run_broadcast"]
    assert record["deficit_sats"] == 0 and record["shortfall"] == {}
    await assert_balanced(ledger)


async def test_a_cancelled_psbt_broadcast_after_the_miners_were_paid_again_is_a_deficit(pool: Pool, ledger, wallet,
                                                                                        audit_records):
    await credit_both(ledger)
    run = await pool.runner().run()
    psbt = Path(run.psbt_path).read_text().strip()
    await pool.cancel(run.run_id)
    assert (await pool.runner("sendmany").run()).status == "sent"        # paid again
    await credit(ledger, "alice", 100_000, 1_000, ref="later")          # alice earned more since
    wallet.sign_and_broadcast(psbt)                                     # and the old PSBT goes out too
    result = await pool.runner("sendmany").run()
    assert result.reconciled == {run.run_id: "sent"} and result.status == "nothing"
    balances = await ledger.balances()
    # alice's new 100,000 is taken back (she was paid twice); the rest is the pool's loss.
    assert balances[miner_account("alice", "available")] == Balance(0, 0)
    assert balances[miner_account("bolat", "available")] == Balance(0, 0)
    assert balances[POOL_DEFICIT].amount == -(200_000 + 450_000)
    assert balances[CHAIN_PAYMENTS].amount == 1_500_000
    (record,) = [p for p in pool.payouts() if p["action"] == "cancelled_run_broadcast"]
    assert record["shortfall"] == {"alice": 200_000, "bolat": 450_000} and record["deficit_sats"] == 650_000
    await assert_balanced(ledger)


# -- the command line -----------------------------------------------------------------------------

def kzpool(wallet: WalletStandin, psbt_dir: Path, *argv: str) -> tuple[int, str, str]:
    settings = PayoutSettings(wallet_rpc_url=wallet.url, wallet_rpc_user=wallet.user, method="psbt",
                              wallet_rpc_password=wallet.password, threshold_sats=100_000, psbt_dir=str(psbt_dir))
    parser = argparse.ArgumentParser(prog="kzpool")
    add_subcommands(parser.add_subparsers(dest="command", required=True),
                    lambda args: ConfigWithPayouts(load_config(None, args.set), settings), lambda cfg, db, audit: [])
    args = parser.parse_args([*argv, *[a for s in test_overrides() for a in ("--set", s)]])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = args.func(args)
    return code, out.getvalue(), err.getvalue()


async def test_the_cancel_command(tmp_path: Path):
    cfg = load_config(overrides=test_overrides())
    db = Database(cfg.database.url)
    await db.upgrade()
    registry = LicenceRegistry(db, load_pii_box(allow_demo_key=True, demo_key_path="./var/pii-demo.key"))
    assert (await registry.import_datacentres(DATACENTRES_CSV)).ok
    assert (await registry.import_licences(licences_csv(["alice", "bolat"]))).ok
    ledger = Ledger(db)
    await credit(ledger, "alice", 300_000, 3_000)
    await credit(ledger, "bolat", 450_000, 4_500)
    wallet = WalletStandin()
    await wallet.start()
    psbt_dir = tmp_path / "psbt"
    try:
        code, out, _ = await asyncio.to_thread(kzpool, wallet, psbt_dir, "payouts", "run")
        assert code == 0 and ": psbt: PSBT " in out, out
        run_id = out.strip().splitlines()[-1].split()[2].rstrip(":")
        code, out, err = await asyncio.to_thread(kzpool, wallet, psbt_dir, "payouts", "cancel", run_id,
                                                 "--reason", "PSBT lost in transit to the signer")
        assert code == 0, err
        assert "back     alice" in out and "0.00300000" in out and f"payout run {run_id}: cancelled by" in out
        assert "0.00750000 BTC back on 2 miner balance(s)" in out and "unlocked " in out
        code, out, err = await asyncio.to_thread(kzpool, wallet, psbt_dir, "payouts", "cancel", run_id,
                                                 "--reason", "again")
        assert code == 1 and "cancel refused (run_already_closed)" in err
    finally:
        await wallet.close()
    balances = await ledger.balances()
    assert balances[miner_account("bolat", "available")] == Balance(450_000, 4_500)
    async with db.engine.connect() as conn:
        rows = [(k, json.loads(p)) for k, p in (await conn.execute(text(
            "SELECT kind, payload FROM audit_log ORDER BY seq"))).all()]
    await db.close()
    cancels = [p for k, p in rows if k == "payout" and p["action"] == "run_cancelled"]
    assert len(cancels) == 1 and cancels[0]["reason"] == "PSBT lost in transit to the signer"
    assert cancels[0]["subject"] == run_id and cancels[0]["operator"]
    commands = [p["command"] for k, p in rows if k == "admin_command"]
    assert commands == ["payouts run", "payouts cancel", "payouts cancel"]
    assert f"payout:{run_id}:cancelled" in [p["ref"] for k, p in rows if k == "ledger"]
