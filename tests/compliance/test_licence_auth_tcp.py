"""Licence authorization over real sockets: the pool (PoolApp) with the RegistryAuthorizer and the
LicenceWatcher wired as the composition root wires them, miners connecting from chosen loopback
source addresses, and a revocation recorded by the CLI in another process while a miner mines."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from compliance.authorizer import RegistryAuthorizer
from compliance.backoff import RefusalBackoff
from compliance.pii import PiiBox
from compliance.registry import LicenceRegistry
from compliance.standing import kz_today, utc_now
from compliance.watcher import LicenceWatcher
from pool.app import PoolApp
from pool.config import load_config
from pool.db import Database
from pool.simnet import SimulatedChain
from stratum.errors import ErrorCode

from db_fixtures import TIMEOUT_FACTOR
from registry_fixtures import (ALICE_IIN, BOLAT_BIN, CASPIAN_BIN, DANA_IIN, OWNER_EKI, PII_KEY,
                               PII_KEY_HEX, licence_line, licences_csv)
from stratum_client import StratumTestClient

REPO = Path(__file__).resolve().parents[2]
REVOCATION_DEADLINE_S = 5.0
# The farm's data centre is 127.0.0.0/29: 127.0.0.1-7 are inside, 127.0.0.9 is not.
DATACENTRES = ("id,name,region,address,owner_iin_bin,cidrs\n"
               f"dc-loop,Loopback DC,Almaty,this machine,{OWNER_EKI},127.0.0.0/29 ::1/128\n")
TODAY = kz_today(utc_now())


def licences() -> str:
    day = timedelta(days=1)
    return licences_csv(
        licence_line("miner1", ALICE_IIN, "Alice Ivanova IE", "KZ-T-1", subtype="II", datacentre="dc-loop",
                     issued=TODAY - 30 * day),
        licence_line("old", BOLAT_BIN, "Bolat Energy LLP", "KZ-T-2", datacentre="dc-loop",
                     issued=TODAY - 3 * 365 * day - 10 * day),
        licence_line("paused", CASPIAN_BIN, "Caspian Hash JSC", "KZ-T-3", datacentre="dc-loop",
                     issued=TODAY - 30 * day, status="suspended", suspended_until=(TODAY + 30 * day).isoformat()),
        licence_line("gone", DANA_IIN, "Dana Seitova IE", "KZ-T-4", datacentre="dc-loop",
                     issued=TODAY - 30 * day, status="revoked"),
    )


class LicensedPool:
    def __init__(self, app: PoolApp, url: str, auth: RegistryAuthorizer) -> None:
        self.app, self.url, self.auth = app, url, auth

    async def connect(self, source: str = "127.0.0.1") -> StratumTestClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.app.server.ports[0],
                                                       local_addr=(source, 0), limit=1 << 20)
        return StratumTestClient(reader, writer)


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[LicensedPool]:
    url = f"sqlite+aiosqlite:///{tmp_path}/pool.sqlite3"
    db = Database(url)
    await db.upgrade()
    registry = LicenceRegistry(db, PiiBox(PII_KEY))
    assert (await registry.import_datacentres(DATACENTRES)).applied
    assert (await registry.import_licences(licences())).applied
    auth = RegistryAuthorizer(registry, require_datacentre_ip=True)
    cfg = load_config(overrides=["stratum.host=\"127.0.0.1\"", "stratum.port=0", "stratum.start_difficulty=1e-6",
                                 "stratum.min_difficulty=1e-8"])
    app = PoolApp(cfg, source=SimulatedChain(bits=0x1D0FFFFF, refresh_s=3600), authorizer=auth)

    def disconnect(login: str, text: str) -> None:
        app.server.show_message(lambda account: account.login == login, text, disconnect=True)

    watcher = LicenceWatcher(registry, disconnect, authorizer=auth, interval_s=1.0)
    await watcher.start()                     # before the listener: the baseline exists first
    await app.start()
    await asyncio.wait_for(app.jobs.first_job.wait(), 5)
    try:
        yield LicensedPool(app, url, auth)
    finally:
        await app.stop()
        await watcher.stop()
        await db.close()


async def refused(pool: LicensedPool, worker: str, source: str) -> list:
    client = await pool.connect(source)
    try:
        assert (await client.request("mining.subscribe", ["test/1.0"]))["error"] is None
        reply = await client.request("mining.authorize", [worker, "x"])
        return reply["error"]
    finally:
        await client.close()


# Each from its own source address, so no case waits out another's refusal backoff.
@pytest.mark.parametrize("worker, source, reason", [
    ("stranger.rig1", "127.0.0.2", "unknown_login"),
    ("old.rig1", "127.0.0.3", "licence_expired"),
    ("paused.rig1", "127.0.0.4", "licence_suspended"),
    ("gone.rig1", "127.0.0.5", "licence_revoked"),
    ("miner1.rig1", "127.0.0.9", "address_outside_datacentre"),
])
async def test_refused_with_24_and_the_reason(pool: LicensedPool, worker: str, source: str, reason: str) -> None:
    error = await refused(pool, worker, source)
    assert error[0] == ErrorCode.UNAUTHORIZED_WORKER
    assert error[1].startswith(reason + ": "), error


async def test_revoked_from_the_cli_while_mining_is_cut_off_within_5_s(pool: LicensedPool) -> None:
    miner = await pool.connect()
    await miner.handshake(worker="miner1.rig1")
    share: list[str] = []
    for i in range(3):
        share = miner.mine_share(extranonce2=i, worker="miner1.rig1")
        assert (await miner.request("mining.submit", share))["result"] is True

    async def keep_mining() -> None:
        n = 100
        while not miner.closed:
            share = miner.mine_share(extranonce2=n, worker="miner1.rig1")
            await miner.request("mining.submit", share, wait=False)
            n += 1
            await asyncio.sleep(0.1)

    mining = asyncio.create_task(keep_mining())
    env = {**os.environ, "KZPOOL_PII_KEY": PII_KEY_HEX, "PYTHONPATH": str(REPO)}
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "compliance.cli", "licences", "revoke", "miner1", "--reason", "order 42 of the ministry",
        "--set", f"database.url={pool.url}", cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await cli.communicate()
    recorded = time.monotonic()           # the CLI has committed the revocation
    assert cli.returncode == 0, err.decode()
    assert out.decode().startswith("miner1: revoked")

    await miner.wait_for(lambda: miner.closed, timeout=REVOCATION_DEADLINE_S + 1)
    assert time.monotonic() - recorded < REVOCATION_DEADLINE_S
    mining.cancel()
    messages = [n["params"][0] for n in miner.notifications if n["method"] == "client.show_message"]
    assert len(messages) == 1
    assert messages[0].startswith("licence_revoked:") and "order 42 of the ministry" in messages[0]
    # The share path's check says no, and a new connection with that login is refused.
    assert not pool.auth.is_still_valid("miner1")
    again = await pool.connect()
    try:
        assert (await again.request("mining.subscribe", ["test/1.0"]))["error"] is None
        error = (await again.request("mining.authorize", ["miner1.rig1", "x"]))["error"]
        assert error[0] == ErrorCode.UNAUTHORIZED_WORKER and error[1].startswith("licence_revoked: ")
        late = await again.request("mining.submit", share)        # the last share it mined before
        assert late["result"] is not True and late["error"][0] == ErrorCode.UNAUTHORIZED_WORKER
    finally:
        await again.close()


async def test_repeated_refusals_from_one_address_are_answered_later_and_later(pool: LicensedPool) -> None:
    pool.auth.backoff = RefusalBackoff(base_s=0.2, max_s=0.4)
    client = await pool.connect("127.0.0.6")
    try:
        assert (await client.request("mining.subscribe", ["test/1.0"]))["error"] is None
        waits = []
        for _ in range(4):
            started = time.monotonic()
            reply = await client.request("mining.authorize", ["stranger.rig1", "x"])
            waits.append(time.monotonic() - started)
            assert reply["error"][0] == ErrorCode.UNAUTHORIZED_WORKER
        slack = 0.15 * TIMEOUT_FACTOR
        assert waits[0] < slack and 0.2 <= waits[1] < 0.2 + slack, waits
        assert 0.4 <= waits[2] < 0.4 + slack and 0.4 <= waits[3] < 0.4 + slack, waits      # capped at max_s
        # The licensed miner on another address is not held back.
        miner = await pool.connect("127.0.0.1")
        started = time.monotonic()
        await miner.handshake(worker="miner1.rig1")
        assert time.monotonic() - started < 2 * slack
        await miner.close()
    finally:
        await client.close()
