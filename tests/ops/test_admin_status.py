"""The localhost admin endpoint and `kzpool status` against a running pool, and with no pool at all."""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ops_pool import OpsPool, http_get, start_ops_pool, until, wait_s
from pool.admin import AdminHostNotLocal, is_loopback, start_admin_server
from pool.metrics_http import HttpServer
from pool.status_cli import DEFAULT_ADMIN_PORT, EXIT_NOT_RUNNING, add_subcommands, admin_address
from stratum_client import StratumTestClient

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def ops(tmp_path: Path):
    pool = await start_ops_pool(tmp_path)
    yield pool
    await pool.close()


@pytest.fixture
async def admin(ops: OpsPool):
    server = await start_admin_server(ops.app, "127.0.0.1", 0)
    yield server
    server.close()


async def run_status(*args: str) -> tuple[int, str, str]:
    """`kzpool status` as its own process (python -m pool.status_cli): the pool keeps serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "pool.status_cli", *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), wait_s(20))
    return proc.returncode or 0, out.decode(), err.decode()


async def mine_some(ops: OpsPool) -> StratumTestClient:
    miner = await StratumTestClient.connect("127.0.0.1", ops.stratum_port)
    await miner.handshake()
    for extranonce2 in range(1, 4):
        assert (await miner.request("mining.submit", miner.mine_share(extranonce2=extranonce2)))["result"] is True
    await until(lambda: ops.app.sink.blocks.found and not ops.app.sink._tasks
                and ops.app.jobs.template.height == ops.node.chain.tip.height + 1)
    return miner


async def test_status_json_reports_the_running_pool(ops: OpsPool, admin: HttpServer):
    miner = await mine_some(ops)
    status, headers, body = await http_get(admin.port, "/status")
    assert status == 200 and headers["content-type"] == "application/json"
    st = json.loads(body)
    assert st["workers"] == 1 and st["logins"] == 1 and st["connections"]["authorized"] == 1
    assert st["shares"]["accepted"] == ops.app.server.stats.shares[("accepted", "")] >= 3
    assert st["hashrate"]["pool_hps"] > 0 and st["hashrate"]["top_logins"][0]["login"] == "demo"
    last = ops.app.sink.blocks.found[-1]
    assert st["last_block"]["hash"] == last.hash_display and st["last_block"]["height"] == last.height
    assert st["blocks"]["accepted"] == ops.app.sink.blocks.accepted >= 1
    assert st["chain"]["height"] == ops.node.chain.tip.height + 1
    [node] = st["nodes"]
    assert node["name"] == ops.node.url.removeprefix("http://") and node["healthy"] is True
    # Features not built yet say so; nothing is made up.
    assert st["attestation"]["state"] == st["curtailments"]["state"] == "unavailable"
    await miner.close()


async def test_kzpool_status_prints_human_and_json(ops: OpsPool, admin: HttpServer):
    miner = await mine_some(ops)
    code, out, err = await run_status("--admin", f"127.0.0.1:{admin.port}")
    assert code == 0, err
    for expected in ("hashrate", "workers      1 on 1 connections", "last block", ops.node.url.removeprefix("http://"),
                     " up ", "attestation  unavailable", "curtailments unavailable"):
        assert expected in out, (expected, out)
    code, out, _ = await run_status("--json", "--admin", f"127.0.0.1:{admin.port}")
    assert code == 0 and json.loads(out)["workers"] == 1
    await ops.node.stop()
    await until(lambda: not ops.app.source.health()[0].healthy)
    code, out, _ = await run_status("--admin", f"127.0.0.1:{admin.port}")
    assert code == 0 and " DOWN " in out
    await miner.close()


async def test_status_when_the_pool_is_not_running():
    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = await run_status("--admin", f"127.0.0.1:{port}")
    assert code == EXIT_NOT_RUNNING and out == ""
    assert f"kzpool is not running: nothing answers on 127.0.0.1:{port}" in err


async def test_admin_binds_loopback_only(ops: OpsPool):
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        with pytest.raises(AdminHostNotLocal):
            await start_admin_server(ops.app, host, 0)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.8.9.10")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.org")


def test_status_subcommand_reads_the_admin_section_of_the_config():
    parser = argparse.ArgumentParser(prog="kzpool")
    loaded = SimpleNamespace(admin=SimpleNamespace(host="127.0.0.1", port=9555))
    add_subcommands(parser.add_subparsers(dest="command"), lambda args: loaded)
    args = parser.parse_args(["status", "--json"])
    assert args.json and callable(args.func)
    assert admin_address(args, lambda a: loaded) == ("127.0.0.1", 9555)
    assert admin_address(args, lambda a: SimpleNamespace()) == ("127.0.0.1", DEFAULT_ADMIN_PORT)
    assert admin_address(parser.parse_args(["status", "--admin", "[::1]:9200"]), None) == ("::1", 9200)
