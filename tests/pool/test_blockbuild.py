"""Jobs from templates and blocks from winning shares, judged by the simulated chain and python-bitcoinlib."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import bitcoin
import pytest
from bitcoin.core import CBlock, CheckBlock

from cpu_miner import mine
from pool.blockbuild import BlockAssemblyError, JobBuilder, JobContext, assemble_block, build_job
from pool.hashing import dsha256
from pool.merkle import merkle_root, witness_commitment_script_for
from pool.script import bip34_height_push
from pool.simnet import SimulatedChain
from pool.targets import target_from_nbits
from pool.template import BlockTemplate
from pool.txparse import Block
from stratum.jobs import Job, prevhash_to_stratum_hex

EASY_BITS = 0x207FFFFF
NOW = 1_700_000_000
PAYOUT = b"\x00\x14" + bytes(range(20))
EN1, EN2 = bytes.fromhex("0a0b0c0d"), bytes.fromhex("00000000000000ff")


def chain(**kwargs: object) -> SimulatedChain:
    return SimulatedChain(**{"bits": EASY_BITS, "clock": lambda: NOW, **kwargs})  # type: ignore[arg-type]


def mined_block(job: Job, extranonce1: bytes = EN1, extranonce2: bytes = EN2) -> bytes:
    nonce, _ = mine(job, extranonce1, extranonce2, job.network_target)
    return assemble_block(job, extranonce1, extranonce2, job.ntime, nonce, job.version)


def job_for(template: BlockTemplate, **kwargs: object) -> Job:
    options = {"tag": b"/kzpool/", "extranonce1_size": len(EN1), "extranonce2_size": len(EN2),
               "clean_jobs": True, **kwargs}
    return build_job(template, "j1", PAYOUT, **options)  # type: ignore[arg-type]


def submit(sim: SimulatedChain, block: bytes) -> str | None:
    [outcome] = asyncio.run(sim.submit_block(block))
    assert outcome.node == "simnet" and outcome.error is None
    return outcome.result


def check_with_bitcoinlib(raw: bytes) -> CBlock:
    bitcoin.SelectParams("regtest")
    try:
        block = CBlock.deserialize(raw)
        CheckBlock(block, cur_time=NOW)
        return block
    finally:
        bitcoin.SelectParams("mainnet")


def test_job_fields_come_from_the_template() -> None:
    template = chain(tx_count=3).template
    job = job_for(template, clean_jobs=False)
    assert (job.version, job.nbits, job.ntime, job.min_ntime, job.height) == (
        template.version, template.bits, template.curtime, template.mintime, template.height)
    assert job.prevhash == template.prev_hash and job.clean_jobs is False
    assert job.network_target == target_from_nbits(template.bits)
    assert isinstance(job.context, JobContext) and job.context.template is template
    params = job.notify_params()
    assert params[1] == prevhash_to_stratum_hex(template.prev_hash)
    assert params[5:8] == [f"{template.version:08x}", f"{template.bits:08x}", f"{template.curtime:08x}"]
    assert len(params[4]) == 2     # 3 transactions + coinbase: two levels


def test_coinbase_starts_with_the_height_and_pays_coinbasevalue() -> None:
    template = chain(tx_count=2, start_height=500).template
    job = job_for(template)
    script_len_offset = 4 + 1 + 36
    assert job.coinb1[script_len_offset + 1:].startswith(bip34_height_push(500))
    block = Block.deserialize(mined_block(job))
    assert sum(o.value for o in block.transactions[0].outputs) == template.coinbasevalue


@pytest.mark.parametrize("tx_count", [0, 1, 2, 3])
@pytest.mark.parametrize("height", range(1, 18))
def test_small_templates_at_low_heights_make_accepted_blocks(tx_count: int, height: int) -> None:
    sim = chain(tx_count=tx_count, start_height=height)
    template = sim.template
    raw = mined_block(job_for(template))
    assert submit(sim, raw) is None
    assert sim.tip_height == height
    ours = Block.deserialize(raw)
    theirs = check_with_bitcoinlib(raw)
    assert theirs.GetHash() == ours.header.hash
    assert [tx.txid for tx in ours.transactions[1:]] == [tx.txid for tx in template.transactions]


@pytest.mark.parametrize("height", [*range(1, 18), 1000])
def test_three_thousand_transactions(height: int) -> None:
    sim = chain(tx_count=3000, start_height=height)
    template = sim.template
    started = time.perf_counter()
    raw = mined_block(job_for(template))
    assert time.perf_counter() - started < 2
    assert submit(sim, raw) is None
    block = Block.deserialize(raw)
    assert len(block.transactions) == 3001
    assert block.header.merkle_root == merkle_root([tx.txid for tx in block.transactions])
    assert len(job_for(template).merkle_branch) == 12     # ceil(log2(3001))


def test_big_block_passes_bitcoinlib_checkblock() -> None:
    sim = chain(tx_count=3000)
    check_with_bitcoinlib(mined_block(job_for(sim.template)))


def test_block_layout_header_count_coinbase_then_template_data() -> None:
    template = chain(tx_count=3).template
    job = job_for(template)
    raw = mined_block(job)
    tx_data = b"".join(tx.data for tx in template.transactions)
    assert raw.endswith(tx_data)
    assert raw[80] == 4
    coinbase = raw[81:len(raw) - len(tx_data)]
    assert coinbase == job.context.coinbase.for_block(EN1 + EN2)
    assert coinbase[4:6] == b"\x00\x01"         # witness form: the template commits


def test_commitment_is_computed_when_the_template_sends_none() -> None:
    sim = chain(tx_count=3, send_witness_commitment=False)
    assert sim.template.default_witness_commitment is None
    job = job_for(sim.template)
    expected = witness_commitment_script_for([tx.wtxid for tx in sim.template.transactions])
    assert job.context.coinbase.witness_commitment == expected
    assert submit(sim, mined_block(job)) is None


def test_no_witness_no_commitment_gives_a_legacy_coinbase() -> None:
    sim = chain(tx_count=0, send_witness_commitment=False)
    job = job_for(sim.template)
    assert job.context.coinbase.witness_commitment is None
    raw = mined_block(job)
    assert raw[81 + 4:81 + 6] != b"\x00\x01"
    assert submit(sim, raw) is None


def test_version_rolling_and_ntime_roll_reach_the_block() -> None:
    sim = chain(tx_count=1)
    job = job_for(sim.template)
    version, ntime = job.version | 0x00002000, job.ntime + 30
    nonce, result = mine(job, EN1, EN2, job.network_target, ntime=ntime, version=version)
    raw = assemble_block(job, EN1, EN2, ntime, nonce, version)
    assert dsha256(raw[:80]) == result.hash
    header = Block.deserialize(raw).header
    assert (header.version, header.time, header.nonce) == (version, ntime, nonce)
    assert submit(sim, raw) is None


def test_extra_push_and_tag_are_in_the_coinbase() -> None:
    sim = chain(tx_count=1)
    job = job_for(sim.template, extra_push=b"A" * 32, tag=b"/kz/")
    block = Block.deserialize(mined_block(job))
    script_sig = block.transactions[0].inputs[0].script_sig
    assert b"\x04/kz/" in script_sig and script_sig.endswith(b"\x20" + b"A" * 32)
    assert submit(sim, block.serialize()) is None


def test_template_parsed_from_getblocktemplate_json_builds_the_same_block() -> None:
    sim = chain(tx_count=3)
    template = sim.template
    assert template.default_witness_commitment is not None
    gbt: dict[str, Any] = {
        "version": template.version, "previousblockhash": template.prev_hash_display,
        "transactions": [{"data": tx.data.hex(), "txid": tx.txid[::-1].hex(), "hash": tx.wtxid[::-1].hex(),
                          "fee": tx.fee, "weight": tx.weight, "sigops": tx.sigops, "depends": []}
                         for tx in template.transactions],
        "coinbaseaux": {}, "coinbasevalue": template.coinbasevalue, "longpollid": template.longpollid,
        "target": f"{template.target:064x}", "mintime": template.mintime, "mutable": list(template.mutable),
        "noncerange": "00000000ffffffff", "curtime": template.curtime, "bits": f"{template.bits:08x}",
        "height": template.height, "rules": list(template.rules),
        "default_witness_commitment": template.default_witness_commitment.hex(),
    }
    parsed = BlockTemplate.from_rpc(gbt, source="node")
    assert parsed == template
    assert mined_block(job_for(parsed)) == mined_block(job_for(template))


def test_job_builder_reuses_per_template_work() -> None:
    sim = chain(tx_count=50)
    builder = JobBuilder()
    a = builder.build_job(sim.template, "a", PAYOUT, b"", 4, 8, True)
    b = builder.build_job(sim.template, "b", b"\x51", b"", 4, 8, False)
    assert a.context.work is b.context.work
    assert a.merkle_branch == b.merkle_branch and a.coinb2 != b.coinb2
    c = builder.build_job(sim.refresh(), "c", PAYOUT, b"", 4, 8, False)
    assert c.context.work is not a.context.work
    assert c.merkle_branch == job_for(sim.template).merkle_branch != a.merkle_branch


def test_assemble_refuses_wrong_extranonce_sizes_and_foreign_jobs() -> None:
    job = job_for(chain().template)
    with pytest.raises(BlockAssemblyError, match="extranonce sizes"):
        assemble_block(job, EN1, EN2[:-1], job.ntime, 0, job.version)
    with pytest.raises(BlockAssemblyError, match="no JobContext"):
        assemble_block(dataclasses.replace(job, context=None), EN1, EN2, job.ntime, 0, job.version)
