"""BitcoindSource over real sockets against Bitcoin Core stand-ins: tips, refresh, failover, stale tips,
ZMQ and its fallback, and block submission judged by the stand-in's independent checks."""
from __future__ import annotations

import asyncio
import logging
import sys

import pytest
from bitcoin.core.script import CScript

from bitcoind_standin import BitcoindStandin, wait_s
from cpu_miner import mine
from pool.bitcoind import BitcoindSource, _per_node, without_commitment_before_segwit
from pool.blockbuild import assemble_block, build_job
from pool.node_health import Backoff, NodeHealth
from pool.template import BlockTemplate, TemplateError
from standin_chain import COMMITMENT_PREFIX, Chain, build_block, real_mainnet_txs

PASSWORD = "standin-password"
FAST = dict(user="kzpool", password=PASSWORD, poll_interval_s=0.05, refresh_s=60.0, timeout_s=wait_s(1),
            backoff_initial_s=0.05, backoff_max_s=0.2)


class Collector:
    """Consumes templates() in its own task, so waiting for "nothing" never cancels the generator."""

    def __init__(self, source: BitcoindSource) -> None:
        self.items: list[BlockTemplate] = []
        self.read = 0                      # next() hands out items in order, none skipped
        self._arrived = asyncio.Event()
        self.task = asyncio.create_task(self._run(source))

    async def _run(self, source: BitcoindSource) -> None:
        async for tpl in source.templates():
            self.items.append(tpl)
            self._arrived.set()

    async def next(self, timeout: float = 2.0) -> BlockTemplate:
        async with asyncio.timeout(wait_s(timeout)):
            while len(self.items) == self.read:
                self._arrived.clear()
                await self._arrived.wait()
        self.read += 1
        return self.items[self.read - 1]

    async def none_within(self, seconds: float) -> bool:
        seen = len(self.items)
        await asyncio.sleep(seconds)
        return len(self.items) == seen


@pytest.fixture
async def make():
    made: list = []

    async def factory(kind: str = "node", *args, **kwargs):
        obj = BitcoindStandin(password=PASSWORD, **kwargs) if kind == "node" else BitcoindSource(*args, **kwargs)
        if kind == "node":
            await obj.start()
        made.append(obj)
        return obj

    yield factory
    for obj in reversed(made):
        await asyncio.wait_for(obj.close(), wait_s(5))    # a close that hangs fails, not blocks, the suite


async def until(predicate, timeout: float = 2.0) -> None:
    async with asyncio.timeout(wait_s(timeout)):
        while not predicate():
            await asyncio.sleep(0.01)


# Tips and refresh -----------------------------------------------------------------------------------
async def test_first_template_at_once_then_each_new_tip(make):
    node = await make()
    source = await make("source", [node.url], **FAST)
    seen = Collector(source)
    first = await seen.next()
    assert (first.height, first.prev_hash_display, len(first.transactions)) == (100001, node.chain.tip.hash, 4)
    new_tip = node.mine()[0]
    second = await seen.next()
    assert second.prev_hash_display == new_tip and second.height == 100002
    assert source.health()[0].healthy and source.health()[0].height == 100002


async def test_long_poll_alone_delivers_a_new_tip(make):
    node = await make()
    source = await make("source", [node.url], **{**FAST, "poll_interval_s": 3600.0})
    seen = Collector(source)
    await seen.next()
    await until(lambda: any(m == "getblocktemplate" and a and "longpollid" in a[0] for m, a in node.calls))
    new_tip = node.mine()[0]
    assert (await seen.next(1.0)).prev_hash_display == new_tip


async def test_polling_alone_delivers_a_new_tip(make):
    node = await make()
    node.hold_longpolls = True
    source = await make("source", [node.url], **FAST)
    seen = Collector(source)
    await seen.next()
    new_tip = node.mine()[0]
    assert (await seen.next(1.0)).prev_hash_display == new_tip


async def test_refresh_brings_new_transactions_on_the_same_tip_no_sooner_than_refresh_s(make):
    node = await make()
    source = await make("source", [node.url], **{**FAST, "refresh_s": 0.4})
    seen = Collector(source)
    first = await seen.next()
    started = asyncio.get_running_loop().time()
    node.set_mempool(real_mainnet_txs()[:2])     # the long poll answers at once; the source waits
    refresh = await seen.next()
    assert asyncio.get_running_loop().time() - started >= 0.3
    assert refresh.prev_hash == first.prev_hash and len(refresh.transactions) == 2


async def test_close_right_after_a_submit_ends_everything(make):
    node = await make()
    source = await make("source", [node.url], **FAST)
    seen = Collector(source)
    await seen.next()
    await source.submit_block(build_block(node.chain.template()))   # wakes every tip loop, then
    await asyncio.wait_for(source.close(), wait_s(1))              # close must still win the race
    await asyncio.wait_for(seen.task, wait_s(1))


# ZMQ ------------------------------------------------------------------------------------------------
async def test_zmq_hashblock_triggers_the_fetch(make):
    pytest.importorskip("zmq", reason="pyzmq is the optional `zmq` extra; the fallback test covers its absence")
    node = await make(zmq_pub=True)
    node.hold_longpolls = True            # neither the long poll nor a poll (1 h) can see the tip
    source = await make("source", [node.url], zmq_hashblock=node.zmq_endpoint,
                        **{**FAST, "poll_interval_s": 3600.0, "health_interval_s": 3600.0})
    seen = Collector(source)
    await seen.next()
    await asyncio.sleep(0.2)              # the SUB socket connects asynchronously (slow joiner)
    new_tip = node.mine()[0]
    assert (await seen.next(1.0)).prev_hash_display == new_tip


async def test_without_pyzmq_the_source_falls_back_to_polling(make, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "zmq", None)           # `import zmq` now raises ImportError
    monkeypatch.setitem(sys.modules, "zmq.asyncio", None)
    node = await make()
    node.hold_longpolls = True
    with caplog.at_level(logging.WARNING, "kzpool.bitcoind"):
        source = await make("source", [node.url], zmq_hashblock="tcp://127.0.0.1:28332", **FAST)
    assert "zmq_unavailable" in caplog.text
    seen = Collector(source)
    await seen.next()
    new_tip = node.mine()[0]
    assert (await seen.next(1.0)).prev_hash_display == new_tip


# Failover -------------------------------------------------------------------------------------------
async def test_outage_failover_and_recovery_with_one_log_line(make, caplog):
    shared = Chain(real_mainnet_txs())              # two nodes in sync
    a, b = await make(chain=shared), await make(chain=shared)
    source = await make("source", [a.url, b.url], **FAST)
    seen = Collector(source)
    assert (await seen.next()).source == f"127.0.0.1:{a.port}"      # the first node has priority
    await a.stop()
    with caplog.at_level(logging.INFO, "kzpool.bitcoind"):
        tip = b.mine()[0]
        after = await seen.next()
        assert after.prev_hash_display == tip and after.source == f"127.0.0.1:{b.port}"
        await until(lambda: source.health()[0].failures >= 3)     # it kept retrying...
        down_lines = [r for r in caplog.records if "node_down" in r.message and str(a.port) in r.message]
        assert len(down_lines) == 1                                 # ...and said so once (rate limit)
        assert not source.health()[0].healthy and source.health()[1].healthy
        await a.start()
        await until(lambda: source.health()[0].healthy)
    assert "node_up" in caplog.text
    tip = a.mine()[0]
    assert (await seen.next()).prev_hash_display == tip


async def test_when_every_node_is_down_miners_keep_the_last_job(make):
    node = await make()
    source = await make("source", [node.url], **{**FAST, "refresh_s": 0.2})
    seen = Collector(source)
    await seen.next()
    await node.stop()
    assert await seen.none_within(0.6)      # no refresh, no crash: nothing new to yield
    assert not source.health()[0].healthy and "NodeUnreachable" in source.health()[0].last_error
    await node.start()
    tip = node.mine()[0]
    assert (await seen.next()).prev_hash_display == tip


async def test_a_node_on_a_stale_tip_is_never_used(make):
    lagging, ahead = await make(), await make()       # separate chains from the same block 100000
    ahead.mine(2)
    source = await make("source", [lagging.url, ahead.url], **FAST)   # the lagging node is listed first
    seen = Collector(source)
    first = await seen.next()
    assert first.height == 100003 and first.source == f"127.0.0.1:{ahead.port}"
    lagging.mine(1)                                   # progress, but still behind
    await until(lambda: source.health()[0].height == 100002)
    await ahead.stop()                                # the good node goes away
    lagging.mine(1)                                   # same height as the tip in use, other branch
    await until(lambda: source.health()[0].height == 100003)
    assert await seen.none_within(0.3)
    assert source.health()[0].stale
    tip = lagging.mine(1)[0]                          # now it has the most work
    took_over = await seen.next()
    assert took_over.prev_hash_display == tip and took_over.source == f"127.0.0.1:{lagging.port}"
    assert all(t.source != f"127.0.0.1:{lagging.port}" for t in seen.items[:-1])
    assert not source.health()[0].stale


async def test_a_malformed_template_marks_the_node_down_not_the_source(make, monkeypatch):
    node = await make()
    source = await make("source", [node.url], **FAST)
    seen = Collector(source)
    await seen.next()
    good = node.chain.template
    monkeypatch.setattr(node.chain, "template", lambda now=None: {k: v for k, v in good(now).items() if k != "bits"})
    node.mine()
    await until(lambda: "bits" in source.health()[0].last_error)
    monkeypatch.setattr(node.chain, "template", good)
    tip = node.mine()[0]
    assert (await seen.next()).prev_hash_display == tip


# Submission -----------------------------------------------------------------------------------------
async def test_a_good_block_is_accepted_then_reorged_out(make):
    node = await make()
    source = await make("source", [node.url], **FAST)
    seen = Collector(source)
    tpl = node.chain.template()
    await seen.next()
    block = build_block(tpl)
    [outcome] = await source.submit_block(block)
    assert outcome.accepted and node.submitted[-1][1] is None
    block_hash = node.submitted[-1][0]
    assert (await seen.next()).prev_hash_display == block_hash    # the source moved on by itself
    assert await source.block_status(block_hash) == "active"
    node.mine(2, parent=tpl["previousblockhash"])                  # a longer competing branch
    assert await source.block_status(block_hash) == "orphan"
    assert await source.block_status("00" * 32) == "unknown"
    [again] = await source.submit_block(block)
    assert again.result == "duplicate" and not again.accepted


def _faulty_blocks(tpl: dict) -> dict[str, bytes]:
    height = tpl["height"]
    return {
        "high-hash": build_block(tpl, solve=False),
        "bad-txnmrklroot": build_block(tpl, merkle=bytes(32)),
        "bad-cb-length": build_block(tpl, script_sig=b"\x51"),
        "bad-cb-height": build_block(tpl, script_sig=bytes(CScript([height - 1])) + b"\x00"),
        "bad-witness-merkle-match": build_block(tpl, commitment=COMMITMENT_PREFIX + bytes(32)),
        "bad-witness-nonce-size": build_block(tpl, witness_nonce=bytes(31)),
        "unexpected-witness": build_block(tpl, with_commitment=False),
        "bad-cb-amount": build_block(tpl, payout=tpl["coinbasevalue"] + 1),
        "time-too-old": build_block(tpl, ntime=tpl["mintime"] - 1),
        "prev-blk-not-found": build_block({**tpl, "previousblockhash": "11" * 32}),
    }


async def test_faulty_blocks_get_cores_reasons_from_every_node(make):
    shared = Chain(real_mainnet_txs())
    a, b = await make(chain=shared), await make(chain=shared)
    source = await make("source", [a.url, b.url], **FAST)
    for reason, block in _faulty_blocks(shared.template()).items():
        outcomes = await source.submit_block(block)
        assert [(o.result, o.error, o.accepted) for o in outcomes] == [(reason, None, False)] * 2, reason
    assert shared.tip.height == 100000


async def test_a_down_node_is_a_transport_error_not_a_rejection(make):
    up, down = await make(), await make()
    await down.stop()
    source = await make("source", [up.url, down.url], **FAST)
    outcomes = await source.submit_block(build_block(up.chain.template()))
    assert outcomes[0].accepted
    assert outcomes[1].result is None and "Refused" in outcomes[1].error and not outcomes[1].accepted
    decode = await source.submit_block(b"\x00" * 10)
    assert decode[0].result == "Block decode failed" and decode[0].error is None


async def test_a_block_from_the_pools_own_builder_is_accepted(make):
    node = await make()
    source = await make("source", [node.url], **FAST)
    seen = Collector(source)
    tpl = await seen.next()
    assert any(tx.has_witness for tx in tpl.transactions)        # the segwit path is exercised
    job = build_job(tpl, "j1", b"\x00\x14" + bytes(range(20)), b"/kzpool/", 4, 8, True)
    en1, en2 = bytes.fromhex("0a0b0c0d"), bytes(8)
    nonce, _ = mine(job, en1, en2, job.network_target)
    [outcome] = await source.submit_block(assemble_block(job, en1, en2, job.ntime, nonce, job.version))
    assert outcome.accepted, outcome
    assert node.chain.tip.height == 100001 and node.chain.mempool == []


# Plain rules ----------------------------------------------------------------------------------------
def test_backoff_doubles_to_its_cap_and_counts_concurrent_failures_once():
    policy = Backoff(0.5, 30.0)
    assert [policy.delay_s(n) for n in (1, 2, 3, 7, 8, 1000)] == [0.5, 1.0, 2.0, 30.0, 30.0, 30.0]
    health = NodeHealth("n")
    assert health.record_failure("e1", 100.0, policy) == 0.5
    assert health.record_failure("e2", 100.1, policy) is None       # another loop, same round
    assert health.failures == 1 and health.retry_at_s == 100.5
    assert health.record_failure("e3", 100.6, policy) == 1.0
    assert health.record_ok(101.0) == pytest.approx(1.0) and health.usable(101.0)
    assert health.record_ok(102.0) is None


def test_per_node_settings():
    assert _per_node(None, 2, "zmq_hashblock") == [None, None]
    assert _per_node("tcp://a", 2, "zmq_hashblock") == ["tcp://a", None]
    assert _per_node(["", "tcp://b"], 2, "zmq_hashblock") == [None, "tcp://b"]
    with pytest.raises(ValueError, match="node.cookie_file"):
        _per_node(["x"], 2, "cookie_file")
    with pytest.raises(ValueError, match="rpc_urls"):
        BitcoindSource([])


def test_the_witness_commitment_is_dropped_while_segwit_is_not_in_force():
    # bcoin 1.0.2 on a fresh regtest chain: segwit still signalling, a commitment sent all the same.
    commitment = (COMMITMENT_PREFIX + bytes(32)).hex()
    before = {"rules": [], "default_witness_commitment": commitment, "transactions": []}
    assert "default_witness_commitment" not in without_commitment_before_segwit(before)
    assert without_commitment_before_segwit({**before, "rules": ["csv"]}) == {"rules": ["csv"], "transactions": []}
    for in_force in (["csv", "!segwit", "taproot"], ["segwit"]):            # Core, and a lax server
        assert without_commitment_before_segwit({**before, "rules": in_force})["default_witness_commitment"] \
            == commitment
    assert without_commitment_before_segwit({"default_witness_commitment": commitment}) == \
        {"default_witness_commitment": commitment}                          # no BIP9 rules: left alone
    witness_tx = {"data": "00", "txid": "11" * 32, "hash": "22" * 32}
    with pytest.raises(TemplateError, match="segwit is not among the rules"):
        without_commitment_before_segwit({**before, "transactions": [witness_tx]})
