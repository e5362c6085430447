"""Payout runs through the wallet stand-in over real HTTP: one transaction per run, thresholds,
frozen amounts for revoked licences, a blocked run, refusals, exchange shares, dry runs, PSBTs."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from payouts.deposits import set_deposit
from payouts.gates import LicenceGate
from payouts.ledger import CHAIN_COINBASE, CHAIN_PAYMENTS, PAYOUT_IN_FLIGHT, Ledger, Line, Posting, miner_account
from payouts.run_lock import RunLocked, payout_run_lock
from payouts.run_store import RunStore
from payouts.runner import PayoutRunner
from payouts.settings import PayoutSettings
from payouts.wallet_rpc import WalletRpc
from pool.db import Database

from payout_fixtures import (audit_records, clock, ledger, payout_db, regtest_address, seeded_registry,  # noqa: F401
                             wallet)
from wallet_standin import WalletStandin

LOGINS = ("alice", "bolat", "caspian")


class LocationGate:
    """Stands in for compliance's location attestation (issue 8): blocks with a reason or not."""

    def __init__(self) -> None:
        self.reason: str | None = None

    async def payouts_blocked(self) -> str | None:
        return self.reason


async def credit(ledger: Ledger, login: str, sats: int, commission: int = 0, ref: str = "") -> None:
    await ledger.post(Posting(ref or f"test:{login}:{sats}", "test_credit", (
        Line(CHAIN_COINBASE, -sats - commission), Line("pool:fees", commission),
        Line(miner_account(login, "available"), sats, commission))))


def settings(tmp_path: Path, **overrides) -> PayoutSettings:
    base = dict(threshold_sats=100_000, in_doubt_grace_s=600, psbt_dir=str(tmp_path / "psbt"),
                eligible_exchanges=("aifc-ataix",), exchange_min_share_bps=("2024:5000", "2025:7500"))
    base.update(overrides)
    return PayoutSettings(**base).validate()


@pytest.fixture
async def setup(payout_db: Database, ledger: Ledger, clock, wallet: WalletStandin, audit_records, tmp_path):
    registry = await seeded_registry(payout_db, LOGINS, clock, audit=lambda k, p: audit_records.append((k, p)))
    gate = LocationGate()
    client = WalletRpc(wallet.url, user=wallet.user, password=wallet.password, timeout_s=5)

    def runner(**overrides) -> PayoutRunner:
        crash = overrides.pop("crash", lambda step: None)
        return PayoutRunner(payout_db, ledger, client, LicenceGate(registry, "regtest", clock.now),
                            settings(tmp_path, **overrides), gates=[gate],
                            audit=lambda k, p: audit_records.append((k, p)), clock=clock, crash=crash)
    yield registry, gate, runner
    await client.close()


def payouts_in(audit_records: list) -> list[str]:
    return [p["action"] for k, p in audit_records if k == "payout"]


async def test_one_transaction_pays_every_balance_over_the_threshold(setup, ledger, wallet, audit_records):
    _, _, runner = setup
    await credit(ledger, "alice", 250_000, 2_500)
    await credit(ledger, "bolat", 100_000, 1_000)
    await credit(ledger, "caspian", 99_999)                     # under the threshold: waits
    result = await runner().run()
    assert result.status == "sent" and len(wallet.txs) == 1
    assert wallet.paid() == {regtest_address("alice"): 250_000, regtest_address("bolat"): 100_000}
    assert wallet.txs[0].comment == f"kzpool-payout-{result.run_id}" and wallet.txs[0].txid == result.txid
    balances = await ledger.balances()
    assert balances[miner_account("alice", "available")].amount == 0
    assert balances[miner_account("alice", "available")].commission == 0
    assert balances[miner_account("caspian", "available")].amount == 99_999
    assert balances[CHAIN_PAYMENTS].amount == 350_000 and balances[PAYOUT_IN_FLIGHT].amount == 0
    assert balances["chain:network_fees"].amount == wallet.txs[0].fee
    assert sum(b.amount for b in balances.values()) == 0
    assert payouts_in(audit_records) == ["run_prepared", "run_sent"]
    assert [p["ref"].rsplit(":", 1)[1] for k, p in audit_records if k == "ledger"][-2:] == ["reserve", "sent"]
    assert (await runner().run()).status == "nothing" and len(wallet.txs) == 1


async def test_revoked_licence_freezes_and_blocked_location_stops_the_run(setup, ledger, wallet, audit_records):
    registry, gate, runner = setup
    await credit(ledger, "alice", 300_000)
    await credit(ledger, "bolat", 400_000)
    await registry.revoke("bolat", "court order 12/2026")
    gate.reason = "location_attestation_failed: host clock zone not UTC+5"
    result = await runner().run()
    assert result.status == "blocked" and result.reason.startswith("location_attestation_failed")
    assert wallet.calls == [] and (await ledger.balances())[miner_account("bolat", "available")].amount == 400_000
    blocked = [p for k, p in audit_records if k == "payout"]
    assert blocked[-1]["action"] == "run_blocked" and "location" in blocked[-1]["reason"]

    gate.reason = None
    result = await runner().run()
    assert result.status == "sent" and result.frozen == {"bolat": (400_000, "licence_revoked")}
    assert wallet.paid() == {regtest_address("alice"): 300_000}
    balances = await ledger.balances()
    assert balances[miner_account("bolat", "available")].amount == 0
    assert balances[miner_account("bolat", "frozen")].amount == 400_000
    frozen = [p for k, p in audit_records if k == "payout" and p["action"] == "frozen"]
    assert frozen == [{"action": "frozen", "subject": "-", "login": "bolat", "licence_no": "KZ-DM-0002",
                       "amount_sats": 400_000, "reason": "licence_revoked"}]
    await registry.reinstate("bolat", "revocation annulled")
    result = await runner().run()
    assert result.status == "sent" and result.released == {"bolat": 400_000}
    assert wallet.paid()[regtest_address("bolat")] == 400_000 and len(wallet.txs) == 2


async def test_wallet_refusal_returns_the_reserve(setup, ledger, wallet, audit_records):
    _, _, runner = setup
    await credit(ledger, "alice", 300_000)
    wallet.balance_sats = 1_000                                  # Core: -6 Insufficient funds
    result = await runner().run()
    assert result.status == "failed" and "Insufficient funds" in result.reason
    balances = await ledger.balances()
    assert balances[miner_account("alice", "available")].amount == 300_000 and balances[PAYOUT_IN_FLIGHT].amount == 0
    assert payouts_in(audit_records)[-1] == "run_failed"
    wallet.balance_sats = 10**8
    assert (await runner().run()).status == "sent" and wallet.paid() == {regtest_address("alice"): 300_000}


async def test_exchange_share_and_dry_run(setup, payout_db, ledger, wallet, clock):
    _, _, runner = setup
    await credit(ledger, "alice", 1_000_000, 10_000)
    exchange = regtest_address("ataix-deposit-alice")
    await set_deposit(payout_db, "alice", "aifc-ataix", exchange, 2_000, network="regtest",
                      eligible=("aifc-ataix",), clock=clock)
    before = await ledger.balances()
    dry = await runner().run(dry_run=True)
    assert dry.status == "dry_run" and wallet.calls == [] and await ledger.balances() == before
    (item,) = dry.items
    # 2026: the minimum share is 2025's 75%, above the miner's own 20%
    assert (item.exchange_share_bps, item.exchange_sats, item.wallet_sats) == (7_500, 750_000, 250_000)
    assert sum(part[3] for part in item.parts()) == 10_000
    result = await runner().run()
    assert wallet.paid() == {exchange: 750_000, regtest_address("alice"): 250_000} and len(wallet.txs) == 1
    assert result.items[0].exchange_sats == 750_000


async def test_psbt_mode_pays_once_the_signed_transaction_reaches_the_wallet(setup, payout_db, ledger, wallet, clock,
                                                                              audit_records):
    _, _, runner = setup
    await credit(ledger, "alice", 500_000)
    result = await runner(method="psbt").run()
    assert result.status == "psbt" and wallet.txs == []
    psbt = Path(result.psbt_path).read_text().strip()
    assert (await ledger.balances())[PAYOUT_IN_FLIGHT].amount == 500_000
    assert (await runner(method="psbt").run()).reconciled == {result.run_id: "psbt"}     # not signed yet
    clock.advance(days=2)                                       # signed and broadcast two days later
    wallet.clock = clock
    txid = wallet.sign_and_broadcast(psbt)
    assert txid == result.txid                                  # segwit: signing does not change the txid
    again = await runner(method="psbt").run()
    assert again.reconciled == {result.run_id: "sent"} and again.status == "nothing"
    (run,) = await RunStore(payout_db, ledger).runs(["sent"])
    assert run.sent_us == int(clock()) * 1_000_000              # dated when the wallet got it, for the report
    balances = await ledger.balances()
    assert balances[CHAIN_PAYMENTS].amount == 500_000 and balances[PAYOUT_IN_FLIGHT].amount == 0
    assert "psbt_written" in payouts_in(audit_records) and len(wallet.txs) == 1


async def test_one_run_at_a_time(setup, payout_db, ledger):
    _, _, runner = setup
    async with payout_run_lock(payout_db):
        with pytest.raises(RunLocked):
            await runner().run()
    await credit(ledger, "alice", 200_000)
    results = await asyncio.gather(runner().run(), runner().run(), return_exceptions=True)
    assert sorted(r.status if not isinstance(r, Exception) else type(r).__name__ for r in results) in (
        ["RunLocked", "sent"], ["nothing", "sent"])
