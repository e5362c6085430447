"""An independent check of a submitted block, returning Bitcoin Core's reject reasons.

The simulated chain judges blocks with this, so the pool's builder is tested against a second reading of
the rules rather than against itself: the block is parsed from bytes, every hash is recomputed from the
parsed transactions, and nothing from the job or template is trusted. The order follows Core:
context-free `CheckBlock` first, then the header's place in the chain, then `ContextualCheckBlock`,
then the amounts `ConnectBlock` checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AbstractSet, Mapping

from .merkle import find_witness_commitment, merkle_root, witness_commitment
from .script import DecodeError, bip34_height_push, encode_varint
from .targets import TargetError, target_from_nbits
from .txparse import Block, Transaction

MAX_MONEY = 21_000_000 * 100_000_000
MAX_BLOCK_WEIGHT = 4_000_000
WITNESS_SCALE_FACTOR = 4
MAX_FUTURE_BLOCK_TIME = 2 * 60 * 60


@dataclass(frozen=True, slots=True)
class ChainRules:
    """What the chain expects of the next block on its tip."""
    tip_hash: bytes                  # internal order
    height: int                      # the height the new block would have
    bits: int
    median_time_past: int
    now: int
    subsidy: int
    fees: Mapping[bytes, int]        # txid -> fee of every transaction the chain will accept
    known_blocks: AbstractSet[bytes] = field(default_factory=frozenset)


def check_proof_of_work(block: Block) -> str | None:
    try:
        target = target_from_nbits(block.header.bits)
    except TargetError:
        return "high-hash"           # Core: CheckProofOfWork fails on a negative/zero/overflowing target
    return None if int.from_bytes(block.header.hash, "little") <= target else "high-hash"


def check_transaction(tx: Transaction) -> str | None:
    """Core's `CheckTransaction`: shape and value ranges, no context."""
    if not tx.inputs:
        return "bad-txns-vin-empty"
    if not tx.outputs:
        return "bad-txns-vout-empty"
    total = 0
    for out in tx.outputs:
        if out.value < 0:
            return "bad-txns-vout-negative"
        if out.value > MAX_MONEY:
            return "bad-txns-vout-toolarge"
        total += out.value
        if total > MAX_MONEY:
            return "bad-txns-txouttotal-toolarge"
    outpoints = {(i.prev_txid, i.prev_index) for i in tx.inputs}
    if len(outpoints) != len(tx.inputs):
        return "bad-txns-inputs-duplicate"
    if tx.is_coinbase:
        if not 2 <= len(tx.inputs[0].script_sig) <= 100:
            return "bad-cb-length"
    elif any(i.is_null_prevout for i in tx.inputs):
        return "bad-txns-prevout-null"
    return None


def check_block_context_free(block: Block, raw_size: int) -> str | None:
    """Core's `CheckBlock`: proof of work, merkle root, sizes, coinbase placement, each transaction."""
    if (reason := check_proof_of_work(block)) is not None:
        return reason
    txs = block.transactions
    if not txs:
        return "bad-blk-length"
    txids = [tx.txid for tx in txs]
    if merkle_root(txids) != block.header.merkle_root:
        return "bad-txnmrklroot"
    if len(set(txids)) != len(txids):
        return "bad-txns-duplicate"
    stripped_size = 80 + len(encode_varint(len(txs))) + sum(len(tx.serialize_legacy()) for tx in txs)
    if stripped_size * WITNESS_SCALE_FACTOR > MAX_BLOCK_WEIGHT:
        return "bad-blk-length"
    if not txs[0].is_coinbase:
        return "bad-cb-missing"
    if any(tx.is_coinbase for tx in txs[1:]):
        return "bad-cb-multiple"
    for tx in txs:
        if (reason := check_transaction(tx)) is not None:
            return reason
    if stripped_size * (WITNESS_SCALE_FACTOR - 1) + raw_size > MAX_BLOCK_WEIGHT:
        return "bad-blk-weight"
    return None


def check_witness_commitment(block: Block) -> str | None:
    """BIP141 as Core's `ContextualCheckBlock` applies it."""
    coinbase = block.transactions[0]
    index = find_witness_commitment([out.script_pubkey for out in coinbase.outputs])
    if index is None:
        if any(tx.has_witness for tx in block.transactions):
            return "unexpected-witness"
        return None
    stack = coinbase.inputs[0].witness
    if len(stack) != 1 or len(stack[0]) != 32:
        return "bad-witness-nonce-size"
    # The coinbase's wtxid counts as zero: it cannot commit to itself.
    wtxids = [bytes(32)] + [tx.wtxid for tx in block.transactions[1:]]
    expected = witness_commitment(merkle_root(wtxids), stack[0])
    if coinbase.outputs[index].script_pubkey[6:38] != expected:
        return "bad-witness-merkle-match"
    return None


def check_block_contextual(block: Block, rules: ChainRules) -> str | None:
    """Core's header acceptance and `ContextualCheckBlock` against the chain tip."""
    header = block.header
    if header.bits != rules.bits:
        return "bad-diffbits"
    if header.time <= rules.median_time_past:
        return "time-too-old"
    if header.time > rules.now + MAX_FUTURE_BLOCK_TIME:
        return "time-too-new"
    expected_prefix = bip34_height_push(rules.height)
    if not block.transactions[0].inputs[0].script_sig.startswith(expected_prefix):
        return "bad-cb-height"
    return check_witness_commitment(block)


def check_block_amounts(block: Block, rules: ChainRules) -> str | None:
    """What `ConnectBlock` checks here: every spend is known, and the coinbase claims at most its due."""
    fees = 0
    for tx in block.transactions[1:]:
        fee = rules.fees.get(tx.txid)
        if fee is None:
            return "bad-txns-inputs-missingorspent"
        fees += fee
    if sum(out.value for out in block.transactions[0].outputs) > rules.subsidy + fees:
        return "bad-cb-amount"
    return None


def check_block(raw: bytes, rules: ChainRules) -> str | None:
    """None if the block would become the new tip, otherwise Core's reason string for refusing it."""
    try:
        block = Block.deserialize(raw)
    except DecodeError:
        return "block-decode-failed"
    if block.header.hash in rules.known_blocks:
        return "duplicate"
    if (reason := check_block_context_free(block, len(raw))) is not None:
        return reason
    if block.header.prev_hash != rules.tip_hash:
        # Core stores a valid block on a known side branch without making it the tip: "inconclusive".
        return "inconclusive" if block.header.prev_hash in rules.known_blocks else "prev-blk-not-found"
    if (reason := check_block_contextual(block, rules)) is not None:
        return reason
    return check_block_amounts(block, rules)
