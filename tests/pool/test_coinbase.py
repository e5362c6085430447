"""Coinbase layout and split (STRATUM-SPEC §3.2, §3.3), checked by parsing it back two ways."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from bitcoin.core import CTransaction
from hypothesis import given, strategies as st

from bitcoin_vectors import VECTORS
from pool.coinbase import COINBASE_WITNESS, MAX_SCRIPT_SIG_SIZE, CoinbaseError, build_coinbase, build_script_sig, \
    coinbase_witness_serialization, witness_commitment_for
from pool.hashing import dsha256
from pool.merkle import witness_commitment_script_for
from pool.script import bip34_height_push
from pool.template import BlockTemplate, TemplateTx
from pool.txparse import Transaction

P2WPKH = b"\x00\x14" + bytes(range(20))
SLUSH = VECTORS["stratum_worked_example_testnet3_25096"]
EMPTY_COMMITMENT = bytes.fromhex(VECTORS["witness_commitment"]["empty_template"]["default_witness_commitment_script"])


def template(**changes: Any) -> BlockTemplate:
    base = BlockTemplate(version=0x20000000, prev_hash=bytes(32), height=800_000, bits=0x17034219,
                         curtime=1_700_000_000, mintime=1_699_999_000, coinbasevalue=625_000_000)
    return dataclasses.replace(base, **changes)


def test_reproduces_the_slush_coinbase_byte_for_byte() -> None:
    # scriptSig 020862 | 062f503253482f 04b8864e50 (coinbaseaux, raw) | 08 <en1 en2> | 072f736c7573682f
    payout = bytes.fromhex("76a914d23fcdf86f7e756a64a7a9688ef9903327048ed988ac")
    parts = build_coinbase(25096, 50 * 10**8, payout, 8, coinbaseaux=bytes.fromhex("062f503253482f04b8864e50"),
                           extra_push=b"/slush/", tx_version=1, sequence=0)
    notify = SLUSH["notify_params"]
    assert parts.coinb1.hex() == notify[2]
    assert parts.coinb2.hex() == notify[3]
    assert parts.legacy(bytes.fromhex("0800000200000001")).hex() == SLUSH["coinbase_hex"]


def test_script_sig_order_and_single_extranonce_push() -> None:
    layout = build_script_sig(17, 8, coinbaseaux=b"\xaa\xbb", tag=b"/kz/", extra_push=b"anchor")
    assert layout.before_extranonce == bytes.fromhex("0111") + b"\xaa\xbb" + b"\x04/kz/" + b"\x08"
    assert layout.after_extranonce == b"\x06anchor"
    assert layout.size == len(layout.before_extranonce) + 8 + len(layout.after_extranonce)


@pytest.mark.parametrize("height", range(0, 18))
def test_small_heights_still_reach_two_bytes(height: int) -> None:
    layout = build_script_sig(height, 0)
    assert layout.size >= 2
    assert layout.before_extranonce.startswith(bip34_height_push(height))


def test_tag_is_truncated_to_the_budget() -> None:
    layout = build_script_sig(800_000, 8, tag=b"T" * 200, extra_push=b"A" * 32)
    assert layout.size == MAX_SCRIPT_SIG_SIZE
    assert layout.tag_used == b"T" * len(layout.tag_used) and 0 < len(layout.tag_used) < 200


def test_tag_is_dropped_when_not_one_byte_fits() -> None:
    # 4 (height) + 1 + 8 (extranonce) + 2 + 84 (extra push) = 99: one byte left, too few for a push.
    layout = build_script_sig(800_000, 8, tag=b"/kzpool/", extra_push=b"A" * 84)
    assert layout.tag_used == b"" and layout.size == 99


def test_tag_refused_when_truncation_is_off() -> None:
    with pytest.raises(CoinbaseError, match="does not fit"):
        build_script_sig(800_000, 8, tag=b"T" * 100, truncate_tag=False)


def test_fixed_parts_over_100_bytes_are_refused() -> None:
    with pytest.raises(CoinbaseError, match="limit is 100"):
        build_script_sig(800_000, 8, extra_push=b"A" * 90)


def test_extra_push_reserves_space_before_the_tag() -> None:
    without = build_script_sig(800_000, 8, tag=b"T" * 100)
    with_anchor = build_script_sig(800_000, 8, tag=b"T" * 100, extra_push=bytes(32))
    assert without.size == with_anchor.size == MAX_SCRIPT_SIG_SIZE
    assert len(with_anchor.tag_used) < len(without.tag_used)
    assert with_anchor.after_extranonce == b"\x20" + bytes(32)


def test_outputs_pay_coinbasevalue_then_commitment() -> None:
    parts = build_coinbase(800_000, 625_000_000, P2WPKH, 8, witness_commitment=EMPTY_COMMITMENT)
    tx = Transaction.deserialize(parts.legacy(bytes(8)))
    assert [(o.value, o.script_pubkey) for o in tx.outputs] == [(625_000_000, P2WPKH), (0, EMPTY_COMMITMENT)]
    assert tx.is_coinbase and not tx.has_witness


def test_no_commitment_means_a_single_output_and_legacy_block_form() -> None:
    parts = build_coinbase(800_000, 625_000_000, P2WPKH, 8)
    assert len(Transaction.deserialize(parts.legacy(bytes(8))).outputs) == 1
    assert parts.for_block(bytes(8)) == parts.legacy(bytes(8))


def test_witness_serialisation_for_the_block() -> None:
    parts = build_coinbase(800_000, 625_000_000, P2WPKH, 8, witness_commitment=EMPTY_COMMITMENT)
    extranonce = bytes.fromhex("0102030405060708")
    legacy, full = parts.legacy(extranonce), parts.for_block(extranonce)
    assert full == coinbase_witness_serialization(legacy)
    assert full[4:6] == b"\x00\x01" and full[-4 - len(COINBASE_WITNESS):-4] == COINBASE_WITNESS
    ours = Transaction.deserialize(full)
    assert ours.inputs[0].witness == (bytes(32),)
    assert ours.txid == dsha256(legacy) and ours.serialize() == full
    theirs = CTransaction.deserialize(full)
    assert theirs.GetTxid() == dsha256(legacy)
    assert list(theirs.wit.vtxinwit[0].scriptWitness.stack) == [bytes(32)]
    assert theirs.serialize() == full


def test_refuses_empty_payout_negative_value_and_wrong_extranonce_size() -> None:
    with pytest.raises(CoinbaseError, match="anyone-can-spend"):
        build_coinbase(1, 1, b"", 8)
    with pytest.raises(CoinbaseError, match="negative"):
        build_coinbase(1, -1, P2WPKH, 8)
    with pytest.raises(CoinbaseError, match="extranonce must be 8 bytes"):
        build_coinbase(1, 1, P2WPKH, 8).legacy(bytes(7))


def test_commitment_from_the_template_is_used_unchanged() -> None:
    assert witness_commitment_for(template(default_witness_commitment=EMPTY_COMMITMENT)) == EMPTY_COMMITMENT


def test_commitment_computed_when_template_has_witness_but_sent_none() -> None:
    txs = (TemplateTx(b"a", b"\x01" * 32, b"\x02" * 32), TemplateTx(b"b", b"\x03" * 32, b"\x03" * 32))
    assert witness_commitment_for(template(transactions=txs)) == witness_commitment_script_for([b"\x02" * 32,
                                                                                             b"\x03" * 32])


def test_no_commitment_without_witness_or_default() -> None:
    txs = (TemplateTx(b"a", b"\x01" * 32, b"\x01" * 32),)
    assert witness_commitment_for(template(transactions=txs)) is None
    assert witness_commitment_for(template()) is None


def test_malformed_default_commitment_is_refused() -> None:
    with pytest.raises(CoinbaseError, match="not a commitment"):
        witness_commitment_for(template(default_witness_commitment=bytes.fromhex("6a24aa21a9ed") + bytes(31)))


@given(height=st.integers(min_value=0, max_value=2**31 - 1), extranonce=st.binary(min_size=0, max_size=16),
       tag=st.binary(max_size=120), extra=st.binary(max_size=40), aux=st.binary(max_size=8),
       value=st.integers(min_value=0, max_value=21_000_000 * 10**8), commit=st.booleans())
def test_any_coinbase_parses_back_with_the_extranonce_in_place(height: int, extranonce: bytes, tag: bytes,
                                                               extra: bytes, aux: bytes, value: int,
                                                               commit: bool) -> None:
    parts = build_coinbase(height, value, P2WPKH, len(extranonce), coinbaseaux=aux, tag=tag, extra_push=extra,
                           witness_commitment=EMPTY_COMMITMENT if commit else None)
    tx = Transaction.deserialize(parts.for_block(extranonce))
    script_sig = tx.inputs[0].script_sig
    assert 2 <= len(script_sig) <= MAX_SCRIPT_SIG_SIZE
    assert script_sig.startswith(bip34_height_push(height) + aux)
    start = len(parts.script_sig.before_extranonce)
    assert script_sig[start:start + len(extranonce)] == extranonce
    assert tag.startswith(parts.script_sig.tag_used)
    assert sum(o.value for o in tx.outputs) == value
    assert tx.has_witness == commit
    assert tx.txid == dsha256(parts.coinb1 + extranonce + parts.coinb2)
