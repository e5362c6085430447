"""The simulated chain: templates over time, and Core's reasons for every kind of bad block."""
from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import Callable

import pytest

from cpu_miner import mine, miss
from pool.blockbuild import assemble_block, build_job
from pool.coinbase import coinbase_witness_serialization
from pool.merkle import merkle_root, witness_commitment_script, witness_commitment_script_for
from pool.simnet import SIMNET_BITS, SimulatedChain, block_subsidy, synthetic_transaction
from pool.targets import target_from_nbits
from pool.template import BlockTemplate, SubmitOutcome
from pool.txparse import Block, Transaction, TxIn
from stratum.jobs import Job

EASY_BITS = 0x207FFFFF
NOW = 1_700_000_000
PAYOUT = b"\x00\x14" + bytes(range(20))
EN1, EN2 = b"\x01\x02\x03\x04", b"\x00\x00\x00\x09"


def chain(**kwargs: object) -> SimulatedChain:
    return SimulatedChain(**{"bits": EASY_BITS, "clock": lambda: NOW, **kwargs})  # type: ignore[arg-type]


def job_for(template: BlockTemplate) -> Job:
    return build_job(template, "j", PAYOUT, b"/kzpool/", len(EN1), len(EN2), True)


def block_for(template: BlockTemplate, *, ntime: int | None = None, start_nonce: int = 0) -> bytes:
    job = job_for(template)
    ntime = job.ntime if ntime is None else ntime
    nonce, _ = mine(job, EN1, EN2, job.network_target, ntime=ntime, start_nonce=start_nonce)
    return assemble_block(job, EN1, EN2, ntime, nonce, job.version)


def remined(block: Block, *, fix_merkle: bool = True) -> bytes:
    """The block re-serialised after tampering, with a fresh merkle root (unless told not to) and valid PoW."""
    header = block.header
    if fix_merkle:
        header = dataclasses.replace(header, merkle_root=merkle_root([tx.txid for tx in block.transactions]))
    target = target_from_nbits(header.bits)
    for nonce in range(1_000_000):
        candidate = dataclasses.replace(header, nonce=nonce)
        if int.from_bytes(candidate.hash, "little") <= target:
            return Block(candidate, block.transactions).serialize()
    raise AssertionError("no nonce")


def tampered(raw: bytes, change: Callable[[Block], Block], *, fix_merkle: bool = True) -> bytes:
    return remined(change(Block.deserialize(raw)), fix_merkle=fix_merkle)


def with_coinbase(block: Block, coinbase: Transaction) -> Block:
    return Block(block.header, (coinbase, *block.transactions[1:]))


async def result_of(sim: SimulatedChain, raw: bytes) -> str | None:
    [outcome] = await sim.submit_block(raw)
    return outcome.result


# ---- templates ----

def test_template_is_real_format() -> None:
    sim = chain(tx_count=4, start_height=10)
    template = sim.template
    assert template.height == 10 and template.prev_hash == sim.tip_hash
    assert template.bits == EASY_BITS and template.target == target_from_nbits(EASY_BITS)
    assert template.curtime == NOW and template.mintime <= template.curtime
    assert template.coinbasevalue == block_subsidy(10) + sum(tx.fee for tx in template.transactions)
    assert template.default_witness_commitment == witness_commitment_script_for(
        [tx.wtxid for tx in template.transactions])
    assert [tx.has_witness for tx in template.transactions] == [True, False, True, False]
    for tx in template.transactions:
        parsed = Transaction.deserialize(tx.data)
        assert (parsed.txid, parsed.wtxid) == (tx.txid, tx.wtxid)
        assert len(parsed.inputs) == 1 and 1 <= len(parsed.outputs) <= 2
        assert tx.weight == 3 * len(parsed.serialize_legacy()) + len(tx.data)


def test_subsidy_halves() -> None:
    assert block_subsidy(0) == block_subsidy(209_999) == 50 * 10**8
    assert block_subsidy(210_000) == 25 * 10**8
    assert block_subsidy(150, halving_interval=150) == 25 * 10**8
    assert block_subsidy(64 * 210_000) == 0


def test_curtime_follows_the_clock_but_never_drops_below_mintime() -> None:
    now = [NOW]
    sim = SimulatedChain(bits=EASY_BITS, clock=lambda: now[0])
    now[0] = NOW + 50
    assert sim.refresh().curtime == NOW + 50
    now[0] = NOW - 10_000
    template = sim.refresh()
    assert template.curtime == template.mintime


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        SimulatedChain(bits=0x1D800000 | 0x1234)
    with pytest.raises(ValueError):
        SimulatedChain(start_height=0)


async def test_templates_yields_at_once_then_each_new_tip() -> None:
    sim = chain(tx_count=2)
    stream = sim.templates()
    first = await asyncio.wait_for(anext(stream), 1)
    assert first is sim.template
    assert await result_of(sim, block_for(first)) is None
    second = await asyncio.wait_for(anext(stream), 1)
    assert second.height == first.height + 1
    assert second.prev_hash == sim.accepted[-1] == sim.tip_hash
    await sim.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 1)


async def test_templates_refresh_on_the_same_tip() -> None:
    sim = chain(tx_count=2, refresh_s=0.02)
    stream = sim.templates()
    first = await anext(stream)
    refreshed = await asyncio.wait_for(anext(stream), 1)
    assert refreshed.prev_hash == first.prev_hash and refreshed.height == first.height
    assert refreshed.transactions != first.transactions
    assert refreshed.longpollid != first.longpollid
    # A block from the older template on the same tip is still good.
    assert await result_of(sim, block_for(first)) is None
    await sim.close()


async def test_every_iterator_sees_a_new_tip() -> None:
    sim = chain(tx_count=1)
    streams = [sim.templates(), sim.templates()]
    for stream in streams:
        await anext(stream)
    assert await result_of(sim, block_for(sim.template)) is None
    heights = [(await asyncio.wait_for(anext(s), 1)).height for s in streams]
    assert heights == [2, 2]
    await sim.close()


async def test_default_bits_are_minable_by_a_cpu_quickly() -> None:
    sim = SimulatedChain(clock=lambda: NOW, tx_count=1)
    assert sim.bits == SIMNET_BITS
    started = time.perf_counter()
    raw = block_for(sim.template)
    assert time.perf_counter() - started < 2
    assert await sim.submit_block(raw) == [SubmitOutcome("simnet", None)]


async def test_accepting_advances_the_tip_and_median_time() -> None:
    sim = chain(tx_count=1)
    for expected_height in (1, 2, 3):
        template = sim.template
        assert await result_of(sim, block_for(template, ntime=template.mintime + 5)) is None
        assert sim.tip_height == expected_height
    assert len(sim.accepted) == 3
    assert sim.template.mintime == sim.median_time_past + 1


# ---- rejections ----

async def test_high_hash() -> None:
    sim = SimulatedChain(bits=0x1D00FFFF, clock=lambda: NOW)
    job = job_for(sim.template)
    nonce = miss(job, EN1, EN2, job.network_target)
    assert await result_of(sim, assemble_block(job, EN1, EN2, job.ntime, nonce, job.version)) == "high-hash"
    assert sim.tip_height == 0


async def test_bad_merkle_root() -> None:
    sim = chain(tx_count=2)
    raw = tampered(block_for(sim.template),
                   lambda b: Block(dataclasses.replace(b.header, merkle_root=bytes(32)), b.transactions),
                   fix_merkle=False)
    assert await result_of(sim, raw) == "bad-txnmrklroot"


@pytest.mark.parametrize("height", [1, 2, 16, 17, 128])
async def test_wrong_height_in_coinbase(height: int) -> None:
    sim = chain(tx_count=1, start_height=height)
    wrong = dataclasses.replace(sim.template, height=height + 1)
    assert await result_of(sim, block_for(wrong)) == "bad-cb-height"
    assert sim.tip_height == height - 1


@pytest.mark.parametrize("size", [1, 101])
async def test_coinbase_script_sig_length(size: int) -> None:
    sim = chain(start_height=1)

    def resize(block: Block) -> Block:
        coinbase = block.transactions[0]
        script = (b"\x51" + b"\x00" * 100)[:size]
        txin = dataclasses.replace(coinbase.inputs[0], script_sig=script)
        return with_coinbase(block, dataclasses.replace(coinbase, inputs=(txin,)))

    assert await result_of(sim, tampered(block_for(sim.template), resize)) == "bad-cb-length"


async def test_wrong_witness_commitment() -> None:
    sim = chain(tx_count=3)
    wrong = dataclasses.replace(sim.template, default_witness_commitment=witness_commitment_script(b"\x42" * 32))
    assert await result_of(sim, block_for(wrong)) == "bad-witness-merkle-match"


async def test_commitment_over_other_transactions_does_not_match() -> None:
    sim = chain(tx_count=3)
    other = chain(tx_count=3, seed=99).template
    wrong = dataclasses.replace(sim.template, default_witness_commitment=other.default_witness_commitment)
    assert await result_of(sim, block_for(wrong)) == "bad-witness-merkle-match"


async def test_witness_without_commitment() -> None:
    sim = chain(tx_count=1)

    def drop_commitment(block: Block) -> Block:
        coinbase = block.transactions[0]
        txin = dataclasses.replace(coinbase.inputs[0], witness=())
        return with_coinbase(block, dataclasses.replace(coinbase, inputs=(txin,), outputs=coinbase.outputs[:1]))

    assert await result_of(sim, tampered(block_for(sim.template), drop_commitment)) == "unexpected-witness"


async def test_coinbase_witness_of_the_wrong_size() -> None:
    sim = chain(tx_count=1)

    def short_nonce(block: Block) -> Block:
        coinbase = block.transactions[0]
        txin = dataclasses.replace(coinbase.inputs[0], witness=(bytes(31),))
        return with_coinbase(block, dataclasses.replace(coinbase, inputs=(txin,)))

    assert await result_of(sim, tampered(block_for(sim.template), short_nonce)) == "bad-witness-nonce-size"


async def test_coinbase_claims_too_much() -> None:
    sim = chain(tx_count=2)
    greedy = dataclasses.replace(sim.template, coinbasevalue=sim.template.coinbasevalue + 1)
    assert await result_of(sim, block_for(greedy)) == "bad-cb-amount"


async def test_coinbase_may_claim_less() -> None:
    sim = chain(tx_count=2)
    modest = dataclasses.replace(sim.template, coinbasevalue=sim.template.coinbasevalue - 1000)
    assert await result_of(sim, block_for(modest)) is None


async def test_unknown_transaction() -> None:
    # No witness anywhere, so adding a legacy transaction leaves nothing for the commitment to miss.
    sim = chain(tx_count=0, send_witness_commitment=False)
    foreign = synthetic_transaction(random.Random(5), False)
    raw = tampered(block_for(sim.template), lambda b: Block(b.header, (*b.transactions, foreign)))
    assert await result_of(sim, raw) == "bad-txns-inputs-missingorspent"


async def test_duplicate_transaction() -> None:
    sim = chain(tx_count=1, send_witness_commitment=False)

    def duplicate_last(block: Block) -> Block:
        return Block(block.header, (*block.transactions, block.transactions[-1]))

    raw = block_for(sim.template)
    assert await result_of(sim, tampered(raw, duplicate_last)) == "bad-txns-duplicate"


async def test_coinbase_not_first() -> None:
    sim = chain(tx_count=1)
    raw = tampered(block_for(sim.template), lambda b: Block(b.header, b.transactions[::-1]))
    assert await result_of(sim, raw) == "bad-cb-missing"


async def test_second_coinbase() -> None:
    sim = chain(tx_count=0)
    raw = tampered(block_for(sim.template), lambda b: Block(b.header, (b.transactions[0],) * 2))
    assert await result_of(sim, raw) in ("bad-txns-duplicate", "bad-cb-multiple")


async def test_non_coinbase_with_null_prevout() -> None:
    sim = chain(tx_count=1)

    def null_prevout(block: Block) -> Block:
        tx = block.transactions[1]
        txin = dataclasses.replace(tx.inputs[0], prev_txid=bytes(32), prev_index=0xFFFFFFFF)
        second = dataclasses.replace(tx, inputs=(txin, dataclasses.replace(tx.inputs[0], prev_index=0)))
        return Block(block.header, (block.transactions[0], second))

    assert await result_of(sim, tampered(block_for(sim.template), null_prevout)) == "bad-txns-prevout-null"


async def test_unknown_parent() -> None:
    sim = chain(tx_count=1)
    orphan = dataclasses.replace(sim.template, prev_hash=b"\x77" * 32)
    assert await result_of(sim, block_for(orphan)) == "prev-blk-not-found"


async def test_stale_parent_is_inconclusive_and_resubmission_is_duplicate() -> None:
    sim = chain(tx_count=1)
    template = sim.template
    first = block_for(template)
    rival = block_for(template, start_nonce=Block.deserialize(first).header.nonce + 1)
    assert await result_of(sim, first) is None
    assert await result_of(sim, rival) == "inconclusive"
    assert await result_of(sim, first) == "duplicate"
    assert sim.tip_height == 1


async def test_wrong_bits() -> None:
    sim = chain(tx_count=1)
    harder = dataclasses.replace(sim.template, bits=0x207FFFFE)
    assert await result_of(sim, block_for(harder)) == "bad-diffbits"


async def test_time_limits() -> None:
    sim = chain(tx_count=1)
    assert await result_of(sim, block_for(sim.template, ntime=NOW + 2 * 3600 + 1)) == "time-too-new"
    assert await result_of(sim, block_for(sim.template, ntime=sim.median_time_past)) == "time-too-old"
    assert await result_of(sim, block_for(sim.template, ntime=NOW + 2 * 3600)) is None


async def test_garbage_does_not_decode() -> None:
    sim = chain(tx_count=1)
    raw = block_for(sim.template)
    assert await result_of(sim, raw[:-1]) == "block-decode-failed"
    assert await result_of(sim, raw + b"\x00") == "block-decode-failed"
    assert await result_of(sim, b"") == "block-decode-failed"


async def test_legacy_coinbase_in_a_committing_block_is_refused() -> None:
    # Forgetting the witness serialisation of the coinbase is the classic segwit pool bug.
    sim = chain(tx_count=1)
    job = job_for(sim.template)
    nonce, _ = mine(job, EN1, EN2, job.network_target)
    good = assemble_block(job, EN1, EN2, job.ntime, nonce, job.version)
    legacy = job.context.coinbase.legacy(EN1 + EN2)
    assert coinbase_witness_serialization(legacy) in good
    bad = good.replace(coinbase_witness_serialization(legacy), legacy)
    assert await result_of(sim, bad) == "bad-witness-nonce-size"
    assert await result_of(sim, good) is None


async def test_rejections_leave_the_tip_alone() -> None:
    sim = chain(tx_count=2)
    before = (sim.tip_hash, sim.tip_height, sim.template)
    greedy = dataclasses.replace(sim.template, coinbasevalue=sim.template.coinbasevalue + 1)
    assert await result_of(sim, block_for(greedy)) == "bad-cb-amount"
    assert (sim.tip_hash, sim.tip_height, sim.template) == before and sim.accepted == []


def test_txin_null_prevout_helper() -> None:
    assert TxIn(bytes(32), 0xFFFFFFFF, b"").is_null_prevout
    assert not TxIn(bytes(32), 0, b"").is_null_prevout
