"""Transactions and blocks: round trips, all-bytes-consumed, and agreement with python-bitcoinlib."""
from __future__ import annotations

import random

import pytest
from bitcoin.core import CBlock, CTransaction, CoreMainParams
from hypothesis import given, strategies as st

from bitcoin_vectors import VECTORS
from pool.script import DecodeError
from pool.simnet import synthetic_transaction
from pool.txparse import Block, BlockHeader, Transaction, TxIn, TxOut

GENESIS = CoreMainParams.GENESIS_BLOCK.serialize()
SLUSH_COINBASE = bytes.fromhex(VECTORS["stratum_worked_example_testnet3_25096"]["coinbase_hex"])


def test_genesis_block_round_trip() -> None:
    block = Block.deserialize(GENESIS)
    assert block.serialize() == GENESIS
    assert block.header.hash[::-1].hex() == VECTORS["block_headers"][0]["hash"]
    assert block.transactions[0].is_coinbase
    assert block.transactions[0].txid[::-1].hex() == VECTORS["block_headers"][0]["merkleroot"]


def test_slush_coinbase_round_trip_and_txid() -> None:
    tx = Transaction.deserialize(SLUSH_COINBASE)
    assert tx.serialize() == SLUSH_COINBASE and not tx.has_witness
    assert tx.txid[::-1].hex() == VECTORS["stratum_worked_example_testnet3_25096"]["coinbase_txid_display"]
    assert tx.inputs[0].script_sig.startswith(bytes.fromhex("020862"))


@pytest.mark.parametrize("data", [SLUSH_COINBASE + b"\x00", SLUSH_COINBASE[:-1], b"", GENESIS[:80] + b"\x01"])
def test_trailing_or_missing_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Transaction.deserialize(data)


def test_block_with_trailing_bytes_is_refused() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        Block.deserialize(GENESIS + b"\x00")


def test_header_must_be_80_bytes() -> None:
    with pytest.raises(DecodeError):
        BlockHeader.deserialize(GENESIS[:79])


def test_superfluous_witness_and_unknown_flag_are_refused() -> None:
    legacy = Transaction(2, (TxIn(b"\x01" * 32, 0, b"\x51"),), (TxOut(1, b"\x51"),))
    body = legacy.serialize_legacy()
    empty_witness = body[:4] + b"\x00\x01" + body[4:-4] + b"\x00" + body[-4:]
    with pytest.raises(DecodeError, match="superfluous"):
        Transaction.deserialize(empty_witness)
    with pytest.raises(DecodeError, match="flag"):
        Transaction.deserialize(body[:4] + b"\x00\x02" + body[4:])


def test_huge_counts_are_refused_before_allocating() -> None:
    with pytest.raises(DecodeError, match="exceeds"):
        Block.deserialize(GENESIS[:80] + b"\xfe\xff\xff\xff\x7f")


@given(st.integers(min_value=0, max_value=2**32 - 1), st.booleans())
def test_synthetic_transactions_round_trip_and_agree_with_bitcoinlib(seed: int, with_witness: bool) -> None:
    tx = synthetic_transaction(random.Random(seed), with_witness)
    data = tx.serialize()
    assert Transaction.deserialize(data) == tx
    assert tx.has_witness == with_witness
    assert (tx.txid != tx.wtxid) == with_witness
    theirs = CTransaction.deserialize(data)
    assert theirs.serialize() == data
    assert theirs.GetTxid() == tx.txid
    assert theirs.GetHash() == tx.wtxid


witness_items = st.lists(st.binary(max_size=80), max_size=3)
inputs = st.builds(TxIn, st.binary(min_size=32, max_size=32), st.integers(0, 2**32 - 1), st.binary(max_size=120),
                   st.integers(0, 2**32 - 1), witness_items.map(tuple))
outputs = st.builds(TxOut, st.integers(0, 2**63 - 1), st.binary(max_size=60))


@given(st.integers(0, 2**32 - 1), st.lists(inputs, min_size=1, max_size=4), st.lists(outputs, max_size=4),
       st.integers(0, 2**32 - 1))
def test_any_transaction_round_trips(version: int, ins: list[TxIn], outs: list[TxOut], locktime: int) -> None:
    tx = Transaction(version, tuple(ins), tuple(outs), locktime)
    assert Transaction.deserialize(tx.serialize()) == tx
    assert Transaction.deserialize(tx.serialize_legacy()).txid == tx.txid


def test_block_round_trip_agrees_with_bitcoinlib() -> None:
    rng = random.Random(7)
    txs = tuple(synthetic_transaction(rng, i % 2 == 0) for i in range(5))
    coinbase = Transaction.deserialize(SLUSH_COINBASE)
    header = BlockHeader(0x20000000, b"\x01" * 32, b"\x02" * 32, 1_700_000_000, 0x207FFFFF, 42)
    raw = Block(header, (coinbase, *txs)).serialize()
    assert Block.deserialize(raw).serialize() == raw
    theirs = CBlock.deserialize(raw)
    assert theirs.serialize() == raw and theirs.GetHash() == header.hash
