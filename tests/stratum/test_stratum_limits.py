"""The server's named limits over real sockets: stalled readers, idle peers, session cap, costs, TLS."""
from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
import subprocess
import time

import pytest

from pool.app import PoolApp
from pool.config import load_config
from pool.simnet import SimulatedChain

from stratum_client import StratumTestClient
from pool_overrides import test_overrides as base_config


async def start_pool(**sets: str) -> PoolApp:
    app = PoolApp(load_config(overrides=base_config(**sets)), source=SimulatedChain(bits=0x1D0FFFFF, refresh_s=3600))
    await app.start()
    await asyncio.wait_for(app.jobs.first_job.wait(), 5)
    return app


async def test_miner_that_does_not_read_is_dropped_and_others_keep_getting_jobs():
    app = await start_pool(**{"stratum.write_high_water_bytes": "1024", "stratum.send_stall_timeout_s": "0.5",
                              "stratum.sweep_interval_s": "0.1"})
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", app.server.ports[0]))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b'{"id":1,"method":"mining.subscribe","params":[]}\n'
                     b'{"id":2,"method":"mining.authorize","params":["demo.slow","x"]}\n')
        await writer.drain()
        good = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await good.handshake()
        await asyncio.sleep(0.2)
        slow_ids = [cid for cid, c in app.server.connections.items() if "demo.slow" in c.session.workers]
        assert len(slow_ids) == 1
        job = app.jobs.current
        started = time.monotonic()
        sent = 0
        while slow_ids[0] in app.server.connections and time.monotonic() - started < 20:
            for _ in range(200):
                app.server.broadcast_job(dataclasses.replace(job, job_id=f"x{sent}", clean_jobs=False))
                sent += 1
            await asyncio.sleep(0.05)
        assert slow_ids[0] not in app.server.connections, "stalled reader was never dropped"
        assert app.server.stats.connections_closed["send"] == 1
        # the reading miner is still connected and got the latest job
        await good.wait_for(lambda: good.last_job_id == f"x{sent - 1}")
        assert not good.closed
        writer.close()
        await good.close()
    finally:
        await app.stop()


async def test_idle_peer_is_closed():
    app = await start_pool(**{"stratum.idle_timeout_s": "0.3", "stratum.sweep_interval_s": "0.1"})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.server.ports[0])
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert app.server.stats.connections_closed["idle"] == 1
        writer.close()
    finally:
        await app.stop()


async def test_max_sessions():
    app = await start_pool(**{"stratum.max_sessions": "2"})
    try:
        a = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        b = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await a.handshake()
        await b.handshake()
        reader, writer = await asyncio.open_connection("127.0.0.1", app.server.ports[0])
        writer.write(b'{"id":1,"method":"mining.subscribe","params":[]}\n')
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            data = await asyncio.wait_for(reader.read(), 3)
            if data == b"":
                raise ConnectionError("closed")
        assert app.server.stats.connections_closed["max_sessions"] == 1
        for c in (a, b):
            await c.close()
    finally:
        await app.stop()


async def test_soft_limit_slows_and_hard_limit_closes():
    app = await start_pool(**{"stratum.cost_soft_limit": "15", "stratum.cost_hard_limit": "60"})
    try:
        client = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await client.send_raw(b"{junk}\n{junk}\n")        # 20 > soft limit
        await client.wait_for(lambda: None in client.replies)
        await asyncio.sleep(0.1)
        started = time.monotonic()
        reply = await client.request("mining.subscribe", [])
        assert reply["error"] is None
        assert time.monotonic() - started >= 0.8           # reads were paused ~1 s
        await client.send_raw(b"{junk}\n" * 5)              # past the hard limit
        await client.wait_for(lambda: client.closed, timeout=5)
    finally:
        await app.stop()


@pytest.fixture
def tls_files(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


async def test_tls_listener(tls_files):
    cert, key = tls_files
    app = await start_pool(**{"stratum.tls_cert": f'"{cert}"', "stratum.tls_key": f'"{key}"'})
    try:
        ctx = ssl.create_default_context(cafile=cert)
        ctx.check_hostname = False
        reader, writer = await asyncio.open_connection("127.0.0.1", app.server.ports[0], ssl=ctx)
        client = StratumTestClient(reader, writer)
        await client.handshake()
        share = client.mine_share()
        assert (await client.request("mining.submit", share))["result"] is True
        await client.close()
    finally:
        await app.stop()


async def test_extra_port_has_its_own_difficulty():
    app = await start_pool(**{"stratum.extra_ports": "[{port=0, start_difficulty=0.5, min_difficulty=0.25}]"})
    try:
        assert len(app.server.ports) == 2
        client = await StratumTestClient.connect("127.0.0.1", app.server.ports[1])
        await client.handshake()
        assert client.difficulty == 0.5
        await client.close()
    finally:
        await app.stop()
