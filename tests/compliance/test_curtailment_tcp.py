"""Curtailment and location enforcement over real sockets: the pool (PoolApp) with the licence
authorizer behind a work gate, the CurtailmentEnforcer / LocationAttestor wired as the composition
root is asked to wire them, miners on loopback, and orders given by the `kzpool curtail` command in
another process."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from compliance.attestation import LocationAttestor
from compliance.authorizer import RegistryAuthorizer
from compliance.backoff import RefusalBackoff
from compliance.curtailment import CurtailmentEnforcer
from compliance.location_gate import LocationPayoutGate
from compliance.power_plan import ElectricityPlan
from compliance.schedule import ScheduleBook
from compliance.standing import kz_today, utc_now
from compliance.work_gate import GatedAuthorizer, WorkGate, node_gate
from pool.app import PoolApp
from pool.config import load_config
from pool.db import Database
from pool.simnet import SimulatedChain
from pool_overrides import test_overrides
from registry_fixtures import ALICE_IIN, BOLAT_BIN, licence_line, licences_csv
from stratum.errors import ErrorCode
from stratum_client import StratumTestClient

from power_fixtures import KZ_ADDRESS, country, delegated_file, geoip_file, import_registry, write_mmdb

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 5.0
GRACE_S = 1.0
TODAY = kz_today(utc_now())
LICENCES = licences_csv(
    licence_line("miner1", ALICE_IIN, "Alice Ivanova IE", "KZ-T-1", subtype="II", datacentre="dc-loop",
                 issued=TODAY - timedelta(days=30)),
    licence_line("miner2", BOLAT_BIN, "Bolat Energy LLP", "KZ-T-2", datacentre="dc-loop",
                 issued=TODAY - timedelta(days=30)))


@dataclass
class GatedPool:
    app: PoolApp
    url: str
    enforcer: CurtailmentEnforcer
    attestor: LocationAttestor
    payouts: LocationPayoutGate
    mmdb: Path

    async def connect(self) -> StratumTestClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.app.server.ports[0], limit=1 << 20)
        return StratumTestClient(reader, writer)

    async def miner(self, worker: str) -> StratumTestClient:
        client = await self.connect()
        await client.handshake(worker=worker)
        return client


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[GatedPool]:
    url = f"sqlite+aiosqlite:///{tmp_path}/pool.sqlite3"
    db = Database(url)
    await db.upgrade()
    registry = await import_registry(db, LICENCES)
    auth = RegistryAuthorizer(registry, require_datacentre_ip=True)
    app: PoolApp | None = None

    # --- the wiring the composition root is asked for (see the report / docs/architecture.md) ---
    def sessions_of(login: str | None):
        return lambda account: login is None or account.login == login

    def connected_logins() -> set[str]:
        assert app is not None
        return {acc.login for conn in app.server.connections.values() for acc in conn.session.workers.values()}

    enforcer = CurtailmentEnforcer(
        db, ScheduleBook(ElectricityPlan()), grace_s=GRACE_S, poll_s=1.0, connected_logins=connected_logins,
        on_block=lambda login, text, disconnect: app.server.show_message(sessions_of(login), text, disconnect=disconnect))
    mmdb = Path(geoip_file(tmp_path))
    attestor = LocationAttestor(
        db, node_id="node-a", datacentre_id="dc-kz", public_addresses=[KZ_ADDRESS], mmdb_path=str(mmdb),
        delegated_stats_path=delegated_file(tmp_path), mode="enforce", check_interval_s=3600,
        host_offset=lambda: timedelta(hours=5), activity_interval_s=0.2,
        shares_accepted=lambda: app.server.stats.shares[("accepted", "")],
        on_withhold=lambda text: app.server.show_message(sessions_of(None), text, disconnect=True))
    gate = WorkGate([node_gate(attestor.node_may_work, attestor.withheld_text), enforcer.blocked_reason])
    cfg = load_config(overrides=test_overrides(**{"database.url": f'"{url}"'}))
    app = PoolApp(cfg, source=SimulatedChain(bits=0x1D0FFFFF, refresh_s=3600),
                  authorizer=GatedAuthorizer(auth, gate, backoff=RefusalBackoff(base_s=0, max_s=0)))
    # The app's own operating rules read the same curtailment orders from the same database: whichever
    # enforcer polls first tells the miner, so the share path must ask both (as one pool would).
    own_rules = app.server.still_authorized
    app.server.still_authorized = lambda account: (auth.is_still_valid(account.login) and gate.work_allowed(account.login)
                                                   and (own_rules is None or own_rules(account)))
    server_broadcast = app.server.broadcast_job
    app.jobs.publish = lambda job: server_broadcast(job) if attestor.node_may_work() else 0
    # -----------------------------------------------------------------------------------------------
    await attestor.start()
    await enforcer.start()
    await app.start()
    await asyncio.wait_for(app.jobs.first_job.wait(), 5)
    try:
        yield GatedPool(app, url, enforcer, attestor, LocationPayoutGate(db, mode="enforce", window_s=3600), mmdb)
    finally:
        await app.stop()
        await enforcer.stop()
        await attestor.stop()
        await db.close()


async def kzpool_curtail(url: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "compliance.curtail_cli", "curtail", *args, "--set", f'database.url="{url}"',
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await cli.communicate()
    assert cli.returncode == 0, err.decode()
    return out.decode()


def messages(client: StratumTestClient) -> list[str]:
    return [n["params"][0] for n in client.notifications if n["method"] == "client.show_message"]


async def test_a_curtailment_from_the_cli_reaches_the_miner_within_5_s_and_it_mines_again_after(
        pool: GatedPool) -> None:
    miner, other = await pool.miner("miner1.rig1"), await pool.miner("miner2.rig1")
    for i, client in enumerate((miner, other)):
        share = client.mine_share(extranonce2=i, worker=client is miner and "miner1.rig1" or "miner2.rig1")
        assert (await client.request("mining.submit", share))["result"] is True

    before_order = time.monotonic()     # the pool may act before the CLI process has exited
    out = await kzpool_curtail(pool.url, "--login", "miner1", "--from", "now", "--until", "+1h",
                               "--reason", "KEGOC dispatch order 7")
    ordered = time.monotonic()
    assert out.startswith("order 1: login miner1 curtailed")
    await miner.wait_for(lambda: bool(messages(miner)), timeout=DEADLINE_S + 1)
    told = time.monotonic() - ordered
    print(f"\ncurtailment ordered -> client.show_message: {told:.2f} s", file=sys.stderr)
    assert told < DEADLINE_S, told
    assert messages(miner)[0].startswith("curtailed: order 1 stops grid-powered mining for login miner1")
    assert "KEGOC dispatch order 7" in messages(miner)[0]
    # During the grace period its shares no longer count; after it, the connection is closed.
    late = await miner.request("mining.submit", miner.mine_share(extranonce2=50, worker="miner1.rig1"))
    assert late["error"][0] == ErrorCode.UNAUTHORIZED_WORKER
    await miner.wait_for(lambda: miner.closed, timeout=GRACE_S + 3)
    assert time.monotonic() - before_order >= GRACE_S
    # It cannot come back while curtailed; the other login mines on.
    again = await pool.connect()
    assert (await again.request("mining.subscribe", ["test/1.0"]))["error"] is None
    refused = await again.request("mining.authorize", ["miner1.rig1", "x"])
    assert refused["error"][0] == ErrorCode.UNAUTHORIZED_WORKER and refused["error"][1].startswith("curtailed: ")
    await again.close()
    assert not other.closed and not messages(other)
    share = other.mine_share(extranonce2=7, worker="miner2.rig1")
    assert (await other.request("mining.submit", share))["result"] is True

    assert "cancelled" in await kzpool_curtail(pool.url, "cancel", "1", "--reason", "grid restored")
    cancelled = time.monotonic()
    while True:                       # a miner retries until the pool takes it back
        back = await pool.connect()
        sub = await back.request("mining.subscribe", ["test/1.0"])
        back.extranonce1, back.extranonce2_size = bytes.fromhex(sub["result"][1]), sub["result"][2]
        reply = await back.request("mining.authorize", ["miner1.rig1", "x"])
        if reply["result"] is True:
            break
        await back.close()
        assert time.monotonic() - cancelled < DEADLINE_S, reply
        await asyncio.sleep(0.2)
    print(f"curtailment cancelled -> authorized again: {time.monotonic() - cancelled:.2f} s", file=sys.stderr)
    await back.wait_for(lambda: back.last_job_id is not None)     # it gets work again
    share = back.mine_share(extranonce2=9, worker="miner1.rig1")
    assert (await back.request("mining.submit", share))["result"] is True
    await back.close()
    await other.close()


async def test_a_failed_location_attestation_in_enforce_mode_withholds_work_and_blocks_payouts(
        pool: GatedPool) -> None:
    miner = await pool.miner("miner1.rig1")
    share = miner.mine_share(extranonce2=1, worker="miner1.rig1")
    assert (await miner.request("mining.submit", share))["result"] is True
    await pool.attestor.flush_activity()
    assert await pool.payouts.payouts_blocked() is None          # passed, and produced shares

    # The operator's GeoIP update places the node's address abroad: the next check fails.
    write_mmdb(pool.mmdb, {"2.72.0.0/13": country("RU")})
    assert (await pool.attestor.check_once()).failed
    await miner.wait_for(lambda: miner.closed, timeout=2)
    assert messages(miner)[0].startswith("location_attestation_failed: node node-a: geoip 2.72.10.20 RU")
    newcomer = await pool.connect()
    assert (await newcomer.request("mining.subscribe", ["test/1.0"]))["error"] is None
    refused = await newcomer.request("mining.authorize", ["miner2.rig1", "x"])
    assert refused["error"][1].startswith("location_attestation_failed: ")
    # No new job reaches anyone while the node may not work.
    jobs_before = pool.app.server.jobs
    assert pool.app.jobs.publish(pool.app.jobs.current) == 0 and pool.app.server.jobs is jobs_before
    reason = await pool.payouts.payouts_blocked()
    assert reason is not None and reason.startswith("location_attestation_failed: node node-a produced shares")
    await newcomer.close()

    # Corrected: the next check passes; miners get work and payouts may run.
    write_mmdb(pool.mmdb, {"2.72.0.0/13": country("KZ")})
    assert (await pool.attestor.check_once()).verdict == "pass"
    back = await pool.miner("miner2.rig1")
    assert (await back.request("mining.submit", back.mine_share(extranonce2=2, worker="miner2.rig1")))["result"]
    assert await pool.payouts.payouts_blocked() is None
    await back.close()
