"""`kzpool payouts run` as an operator runs it, with the real compliance gate of issue 8: a failed
location attestation of a node that produced shares blocks the run; once the node passes, the run
pays, freezing the amount of a miner whose licence was revoked; both land in the signed audit log
in the database, with the ledger postings and the command itself."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import time
from dataclasses import replace
from typing import Any

from sqlalchemy import insert, text

from compliance.location_gate import LocationPayoutGate
from compliance.pii import load_pii_box
from compliance.power_models import LocationAttestation, NodeShareMinute
from compliance.registry import LicenceRegistry
from payouts.cli import add_subcommands, compliance_gates
from payouts.gates import blocking_reason
from payouts.ledger import Ledger, miner_account
from payouts.settings import PayoutSettings
from pool.config import PoolConfig, load_config
from pool.db import Database

from payout_fixtures import DATACENTRES_CSV, licences_csv, regtest_address
from pool_overrides import test_overrides
from test_payout_run import credit
from wallet_standin import WalletStandin


class ConfigWithPayouts:
    """A PoolConfig with the `[payouts]` section the composition root will add (pool/config.py is
    the lead's): every other section from the real config."""

    def __init__(self, cfg: PoolConfig, payouts: PayoutSettings) -> None:
        self._cfg, self.payouts = cfg, payouts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cfg, name)


def kzpool(wallet: WalletStandin, *argv: str) -> tuple[int, str]:
    """The `kzpool` command line, in a thread (it runs its own event loop)."""
    settings = PayoutSettings(wallet_rpc_url=wallet.url, wallet_rpc_user=wallet.user,
                              wallet_rpc_password=wallet.password, threshold_sats=100_000)
    parser = argparse.ArgumentParser(prog="kzpool")
    add_subcommands(parser.add_subparsers(dest="command", required=True),
                    lambda args: ConfigWithPayouts(load_config(None, args.set), settings),
                    lambda cfg, db, audit: [LocationPayoutGate(db, mode="enforce", window_s=3600)])
    args = parser.parse_args([*argv, *[a for s in test_overrides() for a in ("--set", s)]])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.func(args)
    return code, out.getvalue()


async def attest(db: Database, verdict: str) -> None:
    now_us = time.time_ns() // 1000
    async with db.engine.begin() as conn:
        await conn.execute(insert(LocationAttestation).values(
            node_id="node-a", datacentre_id="dc-test", checked_us=now_us, verdict=verdict, mode="enforce",
            evidence=json.dumps([{"kind": "geoip", "subject": "198.51.100.7", "result": verdict, "found": "US"}])))
        await conn.execute(db.insert_ignoring_duplicates(NodeShareMinute).values(
            node_id="node-a", minute_s=now_us // 60_000_000 * 60, shares=12))


async def test_blocked_by_location_then_paid_with_a_revoked_miner_frozen():
    cfg = load_config(overrides=test_overrides())
    db = Database(cfg.database.url)
    await db.upgrade()
    registry = LicenceRegistry(db, load_pii_box(allow_demo_key=True, demo_key_path="./var/pii-demo.key"))
    assert (await registry.import_datacentres(DATACENTRES_CSV)).ok
    assert (await registry.import_licences(licences_csv(["alice", "bolat"]))).ok
    ledger = Ledger(db)
    await credit(ledger, "alice", 300_000, 3_000)
    await credit(ledger, "bolat", 400_000, 4_000)
    await registry.revoke("bolat", "licence revoked by the ministry")
    await attest(db, "fail")
    wallet = WalletStandin()
    await wallet.start()
    try:
        code, out = await asyncio.to_thread(kzpool, wallet, "payouts", "run")
        assert code == 1 and "blocked: location_attestation_failed: node node-a" in out and wallet.calls == []

        await asyncio.sleep(0.002)
        await attest(db, "pass")                  # fixed: the node's latest verdict passes
        code, out = await asyncio.to_thread(kzpool, wallet, "payouts", "run", "--dry-run")
        assert code == 0 and "frozen   bolat" in out and "pay      alice" in out and wallet.calls == []
        code, out = await asyncio.to_thread(kzpool, wallet, "payouts", "run")
        assert code == 0 and ": sent: txid " in out, out
        assert wallet.paid() == {regtest_address("alice"): 300_000}
        balances = await ledger.balances()
        assert balances[miner_account("bolat", "frozen")].amount == 400_000
        code, out = await asyncio.to_thread(kzpool, wallet, "payouts", "balances")
        assert code == 0 and "bolat" in out and "0.00400000" in out
    finally:
        await wallet.close()
    async with db.engine.connect() as conn:
        rows = [(k, json.loads(p)) for k, p in (await conn.execute(text(
            "SELECT kind, payload FROM audit_log ORDER BY seq"))).all()]
    await db.close()
    payouts = [p for k, p in rows if k == "payout"]
    assert [p["action"] for p in payouts] == ["run_blocked", "frozen", "run_prepared", "run_sent"]   # dry: none
    assert payouts[0]["reason"].startswith("location_attestation_failed: node node-a")
    assert payouts[1]["login"] == "bolat" and payouts[1]["reason"] == "licence_revoked"
    assert payouts[1]["amount_sats"] == 400_000 and payouts[1]["licence_no"] == "KZ-DM-0002"
    refs = [p["ref"].split(":")[0] for k, p in rows if k == "ledger"]
    assert refs == ["frozen", "payout", "payout"]
    commands = [p["command"] for k, p in rows if k == "admin_command"]
    assert commands == ["payouts run"] * 3 + ["payouts balances"]
    assert "checkpoint" in [k for k, _ in rows]                  # the CLI's records are signed too


async def test_an_expired_accreditation_blocks_every_run_in_production():
    """The default gates (`compliance_gates`) read `[accreditation]` and `[location]`."""
    cfg = load_config(overrides=test_overrides())
    expired = replace(cfg, mode="production", accreditation=replace(
        cfg.accreditation, number="ACC-2023-17", issued="2023-01-10", expires="2026-01-10", authority="MDDIAI"))
    db = Database(cfg.database.url)
    try:
        await db.upgrade()
        assert await blocking_reason(compliance_gates(cfg, db, lambda k, p: None)) is None      # demo: not enforced
        reason = await blocking_reason(compliance_gates(expired, db, lambda k, p: None))
        assert reason is not None and reason.startswith("accreditation_expired: pool accreditation ACC-2023-17")
    finally:
        await db.close()
