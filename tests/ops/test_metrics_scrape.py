"""/metrics over a real socket reflects what happened on the wire: shares the test miner sent and the replies
it got, connections, blocks the stand-in node accepted, node health, the share log, timings."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops_pool import OpsPool, http_get, start_ops_pool, until
from pool.app import PoolApp
from pool.config import load_config
from pool.metrics import REJECT_REASONS, metrics_for
from pool.metrics_http import start_metrics_server
from pool.simnet import SimulatedChain
from stratum_client import StratumTestClient


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def scrape(port: int) -> dict:
    status, headers, body = await http_get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return samples(body.decode())


@pytest.fixture
async def ops(tmp_path: Path):
    pool = await start_ops_pool(tmp_path)
    yield pool
    await pool.close()


async def test_scrape_counts_what_the_miner_saw(ops: OpsPool):
    miner = await StratumTestClient.connect("127.0.0.1", ops.stratum_port)
    await miner.handshake()
    replies, accepted_difficulty = [], 0.0
    for extranonce2 in range(1, 7):
        share = miner.mine_share(extranonce2=extranonce2)
        difficulty = miner.jobs[share[1]][1]          # the difficulty the share was mined at
        replies.append(await miner.request("mining.submit", share))
        accepted_difficulty += difficulty if replies[-1]["result"] is True else 0.0
        replies.append(await miner.request("mining.submit", share))     # the same again: refused
    accepted = sum(1 for r in replies if r["result"] is True)
    refused = [r["error"][1] for r in replies if r["error"]]
    # Settled: shares durable, block submissions answered, the node's new tip turned into a template.
    await until(lambda: ops.sharelog.queue_depth == 0 and not ops.app.sink._tasks
                and ops.app.jobs.template.height == ops.node.chain.tip.height + 1)
    found = await scrape(ops.metrics_port)

    assert accepted >= 6 and len(refused) == len(replies) - accepted
    assert value(found, "kzpool_shares_total", result="accepted", reason="") == accepted
    rejected = sum(v for (name, labels), v in found.items()
                   if name == "kzpool_shares_total" and ("result", "rejected") in labels)
    assert rejected == len(refused)
    for reason in REJECT_REASONS:       # every reason has a series from the start
        assert ("kzpool_shares_total", (("reason", reason), ("result", "rejected"))) in found
    assert value(found, "kzpool_accepted_difficulty_total") == pytest.approx(accepted_difficulty)
    assert value(found, "kzpool_share_submit_seconds_count") == accepted

    assert value(found, "kzpool_connections", state="authorized") == 1
    assert value(found, "kzpool_workers_authorized") == 1 and value(found, "kzpool_logins_connected") == 1
    assert value(found, "kzpool_login_hashrate_hps", login="demo") > 0

    # Blocks: the stand-in node judged them; the pool's counters agree with what the node recorded.
    node_accepted = sum(1 for _, result in ops.node.submitted if result is None)
    assert value(found, "kzpool_blocks_submitted_total") == len(ops.node.submitted)
    assert value(found, "kzpool_blocks_accepted_total") == node_accepted > 0
    assert value(found, "kzpool_blocks_found_total") == len(ops.node.submitted)
    assert value(found, "kzpool_last_block_height") == ops.app.sink.blocks.found[-1].height
    assert value(found, "kzpool_template_height") == ops.node.chain.tip.height + 1
    assert value(found, "kzpool_tip_changes_total") == value(found, "kzpool_tip_to_notify_seconds_count") >= 2

    node = ops.node.url.removeprefix("http://")
    assert value(found, "kzpool_node_up", node=node) == 1
    assert value(found, "kzpool_node_consecutive_failures", node=node) == 0
    assert value(found, "kzpool_node_templates_total", node=node) >= 2
    assert value(found, "kzpool_sharelog_queue_depth") == 0
    assert value(found, "kzpool_sharelog_commits_total") >= 1
    assert value(found, "kzpool_process_open_fds") > 0
    assert all(name.startswith("kzpool_") for name, _ in found)
    await miner.close()


async def test_latencies_are_drained_once_and_closes_counted(ops: OpsPool):
    miner = await StratumTestClient.connect("127.0.0.1", ops.stratum_port)
    await miner.handshake()
    assert (await miner.request("mining.submit", miner.mine_share(extranonce2=1)))["result"] is True
    first = await scrape(ops.metrics_port)
    second = await scrape(ops.metrics_port)
    assert value(first, "kzpool_share_submit_seconds_count") == value(second, "kzpool_share_submit_seconds_count") == 1
    assert ops.app.server.stats.submit_latencies == []
    await miner.close()
    await until(lambda: not ops.app.server.connections)
    after = await scrape(ops.metrics_port)
    assert value(after, "kzpool_connections_closed_total", reason="peer") == 1
    assert value(after, "kzpool_connections", state="authorized") == 0
    assert value(after, "kzpool_shares_in_flight") == 0          # every share answered
    assert value(after, "kzpool_read_pauses_total") == 0         # no overload back-pressure here
    assert value(after, "kzpool_blocks_reorged_after_maturity_total") == 0


async def test_node_down_shows_in_node_metrics(ops: OpsPool):
    await ops.node.stop()
    node = ops.node.url.removeprefix("http://")
    await until(lambda: not ops.app.source.health()[0].healthy)
    found = await scrape(ops.metrics_port)
    assert value(found, "kzpool_node_up", node=node) == 0
    assert value(found, "kzpool_node_consecutive_failures", node=node) >= 1


def simnet_pool(*extra: str) -> PoolApp:
    cfg = load_config(overrides=['stratum.host="127.0.0.1"', "stratum.port=0", "stratum.start_difficulty=1e-6",
                                 "stratum.min_difficulty=1e-8", *extra])
    return PoolApp(cfg, source=SimulatedChain(bits=0x1D0FFFFF, refresh_s=3600))


@pytest.mark.parametrize("top_n", [2, 0])
async def test_per_login_hashrate_exports_only_the_top_n(top_n: int):
    app = simnet_pool('auth.authorizer="allowlist"', 'auth.logins=["alice","bob","carol"]',
                      'auth.allowed_networks=["127.0.0.0/8"]')
    metrics_for(app, per_login_top_n=top_n)
    await app.start()
    server = await start_metrics_server(app, "127.0.0.1", 0)
    miners = []
    try:
        await asyncio.wait_for(app.jobs.first_job.wait(), 5)
        for login, shares in [("alice", 3), ("bob", 2), ("carol", 1)]:
            miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
            miners.append(miner)
            await miner.handshake(worker=f"{login}.rig")
            for extranonce2 in range(shares):
                share = miner.mine_share(extranonce2=extranonce2, worker=f"{login}.rig")
                assert (await miner.request("mining.submit", share))["result"] is True
        found = await scrape(server.port)
        logins = {dict(labels)["login"] for name, labels in found if name == "kzpool_login_hashrate_hps"}
        assert logins == ({"alice", "bob"} if top_n == 2 else set())
        assert value(found, "kzpool_logins_connected") == 3
    finally:
        for miner in miners:
            await miner.close()
        server.close()
        await app.stop()


async def test_login_label_can_be_a_pseudonym():
    from pool.logsetup import Anonymiser
    app = simnet_pool()
    anonymiser = Anonymiser()
    metrics_for(app, login_label=anonymiser.pseudonym)
    await app.start()
    server = await start_metrics_server(app, "127.0.0.1", 0)
    try:
        await asyncio.wait_for(app.jobs.first_job.wait(), 5)
        miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await miner.handshake()
        assert (await miner.request("mining.submit", miner.mine_share()))["result"] is True
        status, _, body = await http_get(server.port, "/metrics")
        assert status == 200 and 'login="demo"' not in body.decode()
        assert f'login="{anonymiser.pseudonym("demo")}"' in body.decode()
        await miner.close()
    finally:
        server.close()
        await app.stop()
