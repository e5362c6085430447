"""Merkle branch for the coinbase, full roots, and the witness commitment (STRATUM-SPEC §3.3, §3.4, §4.6)."""
from __future__ import annotations

import pytest
from bitcoin.core import CBlock
from hypothesis import given, strategies as st

from bitcoin_vectors import VECTORS
from pool.hashing import dsha256, merkle_root_from_branch
from pool.merkle import ZERO_HASH, find_witness_commitment, merkle_branch, merkle_root, witness_commitment, \
    witness_commitment_script, witness_commitment_script_for, witness_merkle_root

BLOCK_100K = VECTORS["stratum_shaped_block_100000"]
TXIDS_100K = [bytes.fromhex(t)[::-1] for t in BLOCK_100K["txids_display"]]
COMMITMENT = VECTORS["witness_commitment"]["empty_template"]

hashes = st.binary(min_size=32, max_size=32)


def test_block_100000_branch_matches_the_job() -> None:
    assert [h.hex() for h in merkle_branch(TXIDS_100K[1:])] == BLOCK_100K["notify_params"][4]


def test_block_100000_branch_is_txid1_then_hash_of_txid2_txid3() -> None:
    assert merkle_branch(TXIDS_100K[1:]) == [TXIDS_100K[1], dsha256(TXIDS_100K[2] + TXIDS_100K[3])]


def test_block_100000_full_root() -> None:
    assert merkle_root(TXIDS_100K)[::-1].hex() == VECTORS["block_headers"][3]["merkleroot"]


def test_no_transactions_gives_an_empty_branch() -> None:
    assert merkle_branch([]) == []


def test_one_transaction_branch_is_that_txid() -> None:
    assert merkle_branch([b"\x01" * 32]) == [b"\x01" * 32]


def test_merkle_root_needs_a_leaf() -> None:
    with pytest.raises(ValueError):
        merkle_root([])


@given(hashes, st.lists(hashes, max_size=70))
def test_branch_folds_to_the_full_root(coinbase: bytes, txids: list[bytes]) -> None:
    branch = merkle_branch(txids)
    assert merkle_root_from_branch(coinbase, branch) == merkle_root([coinbase, *txids])
    assert len(branch) == (len(txids)).bit_length()


@given(st.lists(hashes, min_size=1, max_size=70))
def test_merkle_root_agrees_with_bitcoinlib(txids: list[bytes]) -> None:
    assert merkle_root(txids) == CBlock.build_merkle_tree_from_txids(txids)[-1]


def test_empty_template_witness_commitment_vector() -> None:
    root = witness_merkle_root([])
    assert root.hex() == COMMITMENT["witness_root"]
    assert witness_commitment(root, bytes.fromhex(COMMITMENT["reserved_value"])).hex() == COMMITMENT["commitment"]
    assert witness_commitment_script_for([]).hex() == COMMITMENT["default_witness_commitment_script"]


def test_witness_root_takes_the_coinbase_wtxid_as_zero() -> None:
    wtxids = [b"\x01" * 32, b"\x02" * 32]
    assert witness_merkle_root(wtxids) == merkle_root([ZERO_HASH, *wtxids])


def test_commitment_script_shape() -> None:
    script = witness_commitment_script(b"\x07" * 32)
    assert script.hex() == "6a24aa21a9ed" + "07" * 32
    with pytest.raises(ValueError):
        witness_commitment_script(b"\x07" * 31)


def test_find_witness_commitment_takes_the_highest_index() -> None:
    commit_a, commit_b = witness_commitment_script(b"\x01" * 32), witness_commitment_script(b"\x02" * 32)
    assert find_witness_commitment([b"\x51", commit_a, b"\x51", commit_b + b"extra", b"\x00\x14" + bytes(20)]) == 3
    assert find_witness_commitment([b"\x51", commit_a[:37]]) is None
    assert find_witness_commitment([]) is None
