"""Crash injection at each step of a payout run: before the send (run committed), after the send
before its commit, after the commit, and the wallet executing sendmany but the reply never
arriving. Whatever the step, the next runs pay every miner exactly once: never twice, never
forgotten; and the ledger ends where an uninterrupted run ends."""
from __future__ import annotations

from pathlib import Path

import pytest

from payouts.gates import LicenceGate
from payouts.ledger import CHAIN_PAYMENTS, PAYOUT_IN_FLIGHT, Ledger, miner_account
from payouts.runner import PayoutRunner
from payouts.settings import PayoutSettings
from payouts.wallet_rpc import WalletRpc
from pool.db import Database

from payout_fixtures import (audit_records, clock, ledger, payout_db, regtest_address, seeded_registry,  # noqa: F401
                             wallet)
from test_payout_run import credit
from wallet_standin import WalletStandin

EXPECTED = {regtest_address("alice"): 300_000, regtest_address("bolat"): 450_000}


class SimulatedCrash(BaseException):
    """The process dies here: nothing after this line of the run executes (not an Exception, so
    no handler in the code under test can swallow it)."""


@pytest.fixture
async def make_runner(payout_db: Database, ledger: Ledger, clock, wallet: WalletStandin, audit_records,
                      tmp_path: Path):
    registry = await seeded_registry(payout_db, ("alice", "bolat"), clock)
    clients: list[WalletRpc] = []

    def make(crash_at: str | None = None, method: str = "sendmany") -> PayoutRunner:
        def crash(step: str) -> None:
            if step == crash_at:
                raise SimulatedCrash(step)
        client = WalletRpc(wallet.url, user=wallet.user, password=wallet.password, timeout_s=2)
        clients.append(client)
        # Each "process" gets its own runner, client and ledger handle: only the database persists.
        return PayoutRunner(payout_db, Ledger(payout_db, audit=ledger.audit, clock=clock), client,
                            LicenceGate(registry, "regtest", clock.now),
                            PayoutSettings(threshold_sats=100_000, in_doubt_grace_s=600, method=method,
                                           psbt_dir=str(tmp_path / "psbt")),
                            audit=ledger.audit, clock=clock, crash=crash)
    yield make
    for client in clients:
        await client.close()


async def assert_paid_once(ledger: Ledger, wallet: WalletStandin) -> None:
    assert wallet.paid() == EXPECTED and len(wallet.txs) == 1
    balances = await ledger.balances()
    assert balances[CHAIN_PAYMENTS].amount == sum(EXPECTED.values())
    assert balances.get(PAYOUT_IN_FLIGHT) is None or balances[PAYOUT_IN_FLIGHT].amount == 0
    assert all(balances[miner_account(m, "available")].amount == 0 for m in ("alice", "bolat"))
    assert sum(b.amount for b in balances.values()) == 0 and await ledger.unbalanced() == []


@pytest.mark.parametrize("step", ["prepared", "sent", "committed"])
async def test_crash_at_each_step_never_pays_twice_nor_forgets(make_runner, ledger, wallet, clock, step,
                                                               audit_records):
    await credit(ledger, "alice", 300_000)
    await credit(ledger, "bolat", 450_000)
    with pytest.raises(SimulatedCrash):
        await make_runner(crash_at=step).run()
    assert len(wallet.txs) == (0 if step == "prepared" else 1)
    # The money is off the miners' balances from the moment the run was committed.
    assert (await ledger.balances())[miner_account("alice", "available")].amount == 0
    result = await make_runner().run()
    if step == "prepared":
        # Not in the wallet, but only seconds old: its sendmany could still be running.
        assert result.status == "in_doubt" and wallet.txs == []
        clock.advance(seconds=601)
        result = await make_runner().run()
        assert list(result.reconciled.values()) == ["cancelled"] and result.status == "sent"
    elif step == "sent":
        assert list(result.reconciled.values()) == ["sent"] and result.status == "nothing"
    else:
        assert result.reconciled == {} and result.status == "nothing"
    await assert_paid_once(ledger, wallet)
    assert (await make_runner().run()).status == "nothing"
    await assert_paid_once(ledger, wallet)
    actions = [p["action"] for k, p in audit_records if k == "payout"]
    assert actions.count("run_sent") == 1


async def test_sendmany_executed_but_reply_lost(make_runner, ledger, wallet, audit_records):
    await credit(ledger, "alice", 300_000)
    await credit(ledger, "bolat", 450_000)
    wallet.drop_reply["sendmany"] = True          # the wallet sends; the connection dies before the reply
    result = await make_runner().run()
    # The run's getbalance left a keep-alive connection; a client that retried the sendmany on a
    # fresh one after the dropped reply would have paid twice here.
    assert result.status == "in_doubt" and len(wallet.txs) == 1
    assert [method for method, _ in wallet.calls].count("sendmany") == 1
    assert "run_in_doubt" in [p["action"] for k, p in audit_records if k == "payout"]
    again = await make_runner().run()             # found through its label: marked sent, not sent again
    assert list(again.reconciled.values()) == ["sent"]
    await assert_paid_once(ledger, wallet)


@pytest.mark.parametrize("step", ["prepared", "sent"])
async def test_psbt_run_crash(make_runner, ledger, wallet, clock, step):
    await credit(ledger, "alice", 300_000)
    await credit(ledger, "bolat", 450_000)
    with pytest.raises(SimulatedCrash):
        await make_runner(crash_at=step, method="psbt").run()
    result = await make_runner(method="psbt").run()
    (status,) = result.reconciled.values()
    if step == "prepared":                        # never written: nothing can be signed, cancelled at once
        assert status == "cancelled" and result.status == "psbt"
    else:                                         # written, then died: the file is the run's PSBT
        assert status == "psbt" and result.status == "nothing"
    psbt_files = sorted(Path(make_runner(method="psbt").settings.psbt_dir).glob("*.psbt"))
    assert len(psbt_files) == 1
    wallet.sign_and_broadcast(psbt_files[0].read_text().strip())
    assert list((await make_runner(method="psbt").run()).reconciled.values()) == ["sent"]
    await assert_paid_once(ledger, wallet)
