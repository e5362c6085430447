"""The real pool (`kzpool run` as its own process) against a real full node: bcoin on regtest.

Everything crosses real sockets: the pool talks JSON-RPC to bcoin (getblocktemplate, long poll,
getbestblockhash, submitblock, getblockheader), a test miner speaks Stratum V1 to the pool, and the
blocks it finds are judged by bcoin's own consensus code, segwit and BIP34 included. Nothing in the pool
is replaced or stubbed. On regtest every share at the start difficulty here is also a block.

What is asserted, from bcoin's side, for every block the pool reports:
- bcoin took it: `getblockcount` advanced by exactly the blocks the pool reports accepted, each hash is
  in bcoin's main chain at its height, and bcoin's stored block is byte for byte the block the pool
  submitted (so bcoin did not have to repair it, e.g. add a missing witness nonce);
- the coinbase starts with the BIP34 height (OP_1..OP_16 for 1..16, a minimal push above), pays the
  pool's payout script exactly the template's coinbasevalue (subsidy + the block's fees), and carries
  the witness commitment with the 32-byte witness reserved value;
- the first block carries every segwit transaction that was in bcoin's mempool (txid != wtxid, witness
  present), and bcoin's mempool is empty afterwards.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bitcoin.core import CBlock, b2lx  # type: ignore[import-untyped]

from pool.address import encode_segwit_address
from pool.bitcoind import BitcoindSource, without_commitment_before_segwit
from pool.blockbuild import assemble_block, build_job
from pool.template import BlockTemplate

from bcoin_node import BcoinNode, bcoin, free_port  # noqa: F401  (bcoin is a fixture)
from cpu_miner import mine
from db_fixtures import TIMEOUT_FACTOR
from stratum_client import StratumTestClient

REPO = Path(__file__).resolve().parents[2]
COIN = 100_000_000
HALVING = 150                          # regtest, in Core and bcoin alike
SEGWIT_ACTIVE_HEIGHT = 432             # bcoin's regtest: BIP9 over 144-block windows, signalled from 0
WITNESS_COMMITMENT_PREFIX = bytes.fromhex("6a24aa21a9ed")


def subsidy(height: int) -> int:
    return (50 * COIN) >> (height // HALVING)


def bip34_prefix(height: int) -> bytes:
    """The coinbase scriptSig's start Core (and bcoin) require: CScript() << height."""
    if 1 <= height <= 16:
        return bytes([0x50 + height])
    n = height.to_bytes((height.bit_length() + 8) // 8, "little")   # room for the sign bit
    return bytes([len(n)]) + n


class PoolProcess:
    """`kzpool run` (python -m pool.cli run) pointed at one node, logging key=value lines to a file."""

    def __init__(self, workdir: Path, node: BcoinNode, payout_address: str) -> None:
        self.workdir, self.node = workdir, node
        self.port = free_port()
        self.log_path = workdir / "pool.log"
        sets = ['stratum.host="127.0.0.1"', f"stratum.port={self.port}", "stratum.start_difficulty=1e-6",
                "node.source=bitcoind", f'node.rpc_urls=["{node.rpc_url}"]', 'node.rpc_user="kzpool"',
                "node.refresh_s=3600", "chain.network=regtest", f'coinbase.payout_address="{payout_address}"',
                "metrics.enabled=false", "admin.enabled=false", "log.level=INFO"]
        self.args = [sys.executable, "-m", "pool.cli", "run"] + [a for s in sets for a in ("--set", s)]
        # bcoin checks only the password (its API key); the pool reads it from the environment.
        self.env = dict(os.environ, PYTHONPATH=str(REPO), KZPOOL_RPC_PASSWORD=node.api_key)
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"pool exited:\n{self.log()[-3000:]}"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise AssertionError(f"pool never listened:\n{self.log()[-3000:]}")

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"pool did not stop on SIGTERM:\n{self.log()[-3000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def submitted_blocks(self) -> dict[str, str]:
        """hash -> full block hex, from the pool's `block_submit` lines."""
        return dict(re.findall(r"block_submit hash=([0-9a-f]{64}) bytes=\d+ hex=([0-9a-f]+)", self.log()))

    def accepted(self) -> list[tuple[int, str]]:
        """(height, hash) of each block the pool reports the node accepted."""
        return [(int(h), b) for h, b in re.findall(
            r"block_submitted height=(\d+) hash=([0-9a-f]{64}) node=\S+ result=accepted", self.log())]

    def rejected(self) -> list[str]:
        return re.findall(r"block_submitted .*result=(?!accepted)\S+.*", self.log())

    def coinbasevalues(self) -> dict[int, set[int]]:
        """height -> coinbasevalue of every template the pool used at that height."""
        out: dict[int, set[int]] = {}
        for h, v in re.findall(r"template reason=\S+ node=\S+ height=(\d+) prev=\S+ txs=\d+ coinbasevalue=(\d+)",
                               self.log()):
            out.setdefault(int(h), set()).add(int(v))
        return out


def current_prev(miner: StratumTestClient) -> bytes:
    return miner.jobs[miner.last_job_id][0].prevhash


async def mine_one_block(miner: StratumTestClient) -> None:
    """Submits one share (a block on regtest) and waits for the clean job on the tip it made."""
    prev = current_prev(miner)
    reply = await miner.request("mining.submit", miner.mine_share())
    assert reply["result"] is True, reply
    await miner.wait_for(lambda: current_prev(miner) != prev, timeout=15 * TIMEOUT_FACTOR)


def node_template(node: BcoinNode) -> BlockTemplate:
    """bcoin's template as the pool reads it (pool.bitcoind's edge rules applied)."""
    return BlockTemplate.from_rpc(without_commitment_before_segwit(
        node.rpc("getblocktemplate", {"rules": ["segwit"]})))


def block_on(tpl: BlockTemplate, payout_script: bytes, tag: bytes, **changes) -> tuple[str, bytes]:
    """(hash, block) built and mined by the pool's own code from `tpl` with `changes` (height, prev_hash)."""
    job = build_job(dataclasses.replace(tpl, **changes), "t", payout_script, tag, 4, 4, True)
    en1, en2 = bytes(4), bytes(4)
    nonce, result = mine(job, en1, en2, job.network_target)
    return result.hash_display, assemble_block(job, en1, en2, job.ntime, nonce, job.version)


def parse_block(hex_block: str) -> CBlock:
    return CBlock.deserialize(bytes.fromhex(hex_block))


def check_pool_block(node: BcoinNode, pool: PoolProcess, height: int, block_hash: str, payout_script: bytes,
                     fees: dict[str, int]) -> CBlock:
    """bcoin's view of one block the pool reported accepted (see the module docstring)."""
    assert node.rpc("getblockhash", height) == block_hash, f"block {height} is not in bcoin's main chain"
    stored = node.rpc("getblock", block_hash, False)
    assert stored == pool.submitted_blocks()[block_hash], "bcoin stores a different block than the pool sent"
    block = parse_block(stored)
    assert b2lx(block.GetHash()) == block_hash
    coinbase = block.vtx[0]
    assert coinbase.is_coinbase()
    assert bytes(coinbase.vin[0].scriptSig).startswith(bip34_prefix(height)), \
        f"coinbase scriptSig {bytes(coinbase.vin[0].scriptSig).hex()} lacks the BIP34 height {height}"
    expected_value = subsidy(height) + sum(fees[b2lx(tx.GetTxid())] for tx in block.vtx[1:])
    assert expected_value in pool.coinbasevalues()[height], "the template's coinbasevalue differs"
    paid = [out for out in coinbase.vout if bytes(out.scriptPubKey) == payout_script]
    assert [out.nValue for out in paid] == [expected_value]
    assert sum(out.nValue for out in coinbase.vout) == expected_value
    if height >= SEGWIT_ACTIVE_HEIGHT:
        commitments = [out for out in coinbase.vout
                       if bytes(out.scriptPubKey).startswith(WITNESS_COMMITMENT_PREFIX)]
        assert len(commitments) == 1 and commitments[0].nValue == 0
        assert list(coinbase.wit.vtxinwit[0].scriptWitness.stack) == [bytes(32)], "witness reserved value"
    return block


async def test_blocks_with_segwit_transactions_mined_through_the_pool_extend_bcoins_chain(
        bcoin: BcoinNode, tmp_path: Path):
    started = time.monotonic()
    node = bcoin
    node.create_witness_wallet("kz")
    funding = node.new_address("kz")
    assert funding["type"] == "witness"
    start_height = SEGWIT_ACTIVE_HEIGHT + 8
    node.rpc("generatetoaddress", start_height, funding["address"])
    assert node.rpc("getblockchaininfo")["bip9_softforks"]["segwit"]["status"] == "active"
    node.wait_for_coins("kz", start_height)

    # Segwit transactions in the mempool: the wallet spends its P2WPKH coinbase outputs to fresh
    # bech32 P2WPKH addresses, so every input is signed in the witness.
    fees: dict[str, int] = {}
    for i in range(4):
        sent = node.send("kz", node.new_address("kz")["address"], (i + 1) * COIN)
        fees[sent["hash"]] = sent["fee"]
    assert set(node.rpc("getrawmempool")) == set(fees)

    # The pool pays a fresh wallet key. bcoin 1.0.2 encodes regtest addresses with its own prefixes
    # (bech32 "rb"); the pool takes Core's ("bcrt"). The script, which is all that counts, is the same.
    payout = node.new_address("kz")
    program = bytes.fromhex(payout["program"])[2:]
    payout_script = bytes.fromhex(payout["program"])
    pool = PoolProcess(tmp_path, node, encode_segwit_address("bcrt", 0, program))
    await pool.start()
    miner = None
    try:
        miner = await StratumTestClient.connect("127.0.0.1", pool.port)
        await miner.handshake()
        assert current_prev(miner)[::-1].hex() == node.rpc("getbestblockhash")
        for _ in range(3):
            await mine_one_block(miner)
        # A block from elsewhere (bcoin's own miner): the pool follows it and builds on top of it.
        outside = node.rpc("generatetoaddress", 1, funding["address"])[0]
        await miner.wait_for(lambda: current_prev(miner)[::-1].hex() == outside, timeout=15 * TIMEOUT_FACTOR)
        await mine_one_block(miner)
        await asyncio.sleep(0.3)            # the pool logs each node's answer after the clean job went out
    finally:
        if miner is not None:
            await miner.close()
        code = pool.stop()
    assert code == 0, pool.log()[-3000:]

    accepted = pool.accepted()
    assert not pool.rejected(), pool.rejected()
    assert [h for h, _ in accepted] == [start_height + 1, start_height + 2, start_height + 3, start_height + 5]
    assert node.rpc("getblockcount") == start_height + len(accepted) + 1      # + bcoin's own block
    assert node.rpc("getbestblockhash") == accepted[-1][1]
    assert node.rpc("getblockheader", accepted[-1][1], True)["previousblockhash"] == outside
    blocks = [check_pool_block(node, pool, h, b, payout_script, fees) for h, b in accepted]

    # The first block carries all four segwit transactions from the mempool, witnesses intact.
    first = blocks[0]
    carried = {b2lx(tx.GetTxid()): tx for tx in first.vtx[1:]}
    assert set(carried) == set(fees)
    for txid, tx in carried.items():
        assert tx.has_witness() and b2lx(tx.GetHash()) != txid, f"{txid} has no witness"
    assert set(node.rpc("getblock", accepted[0][1])["tx"][1:]) == set(fees)
    assert node.rpc("getrawmempool") == []
    print(f"bcoin accepted {len(accepted)} pool blocks (heights {[h for h, _ in accepted]}), "
          f"{len(fees)} segwit txs in block {accepted[0][0]}, {time.monotonic() - started:.1f} s")


async def test_first_blocks_of_a_fresh_chain_heights_1_to_17(bcoin: BcoinNode, tmp_path: Path):
    """Heights 1..16 are OP_1..OP_16 in the coinbase, 17 the first pushed number: bcoin (BIP34 enforced
    from height 1, as on Core's regtest) accepts each, and refuses a block whose coinbase names the wrong
    height, which shows the height check is live."""
    started = time.monotonic()
    node = bcoin
    assert node.rpc("getblockcount") == 0
    payout_script = bytes.fromhex("0014") + bytes(range(20))
    pool = PoolProcess(tmp_path, node, encode_segwit_address("bcrt", 0, bytes(range(20))))
    await pool.start()
    miner = None
    try:
        miner = await StratumTestClient.connect("127.0.0.1", pool.port)
        await miner.handshake()
        for _ in range(17):
            await mine_one_block(miner)
        await asyncio.sleep(0.3)
    finally:
        if miner is not None:
            await miner.close()
        code = pool.stop()
    assert code == 0, pool.log()[-3000:]
    accepted = pool.accepted()
    assert not pool.rejected(), pool.rejected()
    assert [h for h, _ in accepted] == list(range(1, 18))
    assert node.rpc("getblockcount") == 17
    for height, block_hash in accepted:
        check_pool_block(node, pool, height, block_hash, payout_script, {})

    # Negative control: the next block, built by the pool's own code but claiming height 19.
    tpl = node_template(node)
    assert tpl.height == 18
    _, wrong = block_on(tpl, payout_script, b"/neg/", height=19)
    verdict = node.rpc("submitblock", wrong.hex())
    assert verdict is not None and "bad-cb-height" in verdict, verdict
    assert node.rpc("getblockcount") == 17
    print(f"bcoin accepted heights 1..17 from the pool, refused a wrong coinbase height ({verdict!r}), "
          f"{time.monotonic() - started:.1f} s")


async def test_a_block_a_reorg_left_behind_reads_as_orphan(bcoin: BcoinNode):
    """bcoin 1.0.2 answers getblockheader for a block off its main chain with a positive confirmations
    count (Core: -1); the pool checks the count against getblockhash, so such a block is an orphan."""
    node = bcoin
    address = node.new_address("primary")["address"]
    ours = node.rpc("generatetoaddress", 3, address)          # heights 1, 2, 3: 3 will be left behind
    tpl = node_template(node)
    script = bytes.fromhex("0014") + bytes(range(20, 40))
    fork3, block3 = block_on(tpl, script, b"/fork/", height=3, prev_hash=bytes.fromhex(ours[1])[::-1])
    assert node.rpc("submitblock", block3.hex()) is None      # a side branch of equal work
    fork4, block4 = block_on(tpl, script, b"/fork/", height=4, prev_hash=bytes.fromhex(fork3)[::-1])
    assert node.rpc("submitblock", block4.hex()) is None      # more work: bcoin reorganises
    assert node.rpc("getbestblockhash") == fork4 and node.rpc("getblockhash", 3) == fork3
    assert node.rpc("getblockheader", ours[2], True)["confirmations"] >= 1     # bcoin's deviation

    source = BitcoindSource([node.rpc_url], user="kzpool", password=node.api_key)
    try:
        assert await source.confirmations(ours[2]) == -1
        assert await source.block_status(ours[2]) == "orphan"
        assert await source.confirmations(ours[1]) == 3
        assert await source.block_status(fork4) == "active"
        assert await source.block_status("00" * 32) == "unknown"
    finally:
        await source.close()
