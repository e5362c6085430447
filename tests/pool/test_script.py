"""Varints, pushes, CScriptNum and the BIP34 height push (STRATUM-SPEC §3.2, §4.5)."""
from __future__ import annotations

import pytest
from bitcoin.core._bignum import bn2vch
from bitcoin.core.script import CScript
from bitcoin.core.serialize import VarIntSerializer
from hypothesis import given, strategies as st

from bitcoin_vectors import VECTORS
from pool.script import DecodeError, bip34_height_push, decode_script_num, decode_varint, encode_varint, \
    push_data, push_data_overhead, push_int, script_num

BIP34 = VECTORS["bip34_height_push"]


@pytest.mark.parametrize("height, expected", sorted((int(h), e) for h, e in BIP34["cases"].items()))
def test_bip34_height_push_vectors(height: int, expected: str) -> None:
    assert bip34_height_push(height).hex() == expected


def test_bip34_wrong_encoding_example() -> None:
    wrong = BIP34["wrong_example"]
    assert bip34_height_push(wrong["height"]).hex() == wrong["right"]
    assert bip34_height_push(wrong["height"]).hex() != wrong["wrong"]


def test_bip34_height_zero_is_op_0() -> None:
    assert bip34_height_push(0) == b"\x00"


def test_bip34_refuses_negative_heights() -> None:
    with pytest.raises(ValueError):
        bip34_height_push(-1)


def test_height_push_agrees_with_bitcoinlib() -> None:
    # python-bitcoinlib's CScript([n]) is Core's push_int64 (OP_N for 0..16, else a CScriptNum push).
    for height in [*range(0, 70_000, 7), *range(0, 300), 8388607, 8388608, 2**31 - 1, 2**31]:
        assert bip34_height_push(height) == bytes(CScript([height])), height


@pytest.mark.parametrize("n, encoded", [
    (0, "00"), (0xFC, "fc"), (0xFD, "fdfd00"), (0xFFFF, "fdffff"), (0x10000, "fe00000100"),
    (0xFFFFFFFF, "feffffffff"), (0x100000000, "ff0000000001000000"),
])
def test_varint_boundaries(n: int, encoded: str) -> None:
    assert encode_varint(n).hex() == encoded
    assert decode_varint(bytes.fromhex(encoded)) == (n, len(encoded) // 2)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_round_trip_and_bitcoinlib(n: int) -> None:
    encoded = encode_varint(n)
    assert decode_varint(b"\xaa" + encoded + b"\xbb", 1) == (n, 1 + len(encoded))
    assert encoded == VarIntSerializer.serialize(n)


@pytest.mark.parametrize("raw", ["fdfc00", "feffff0000", "ffffffffff00000000"])
def test_non_canonical_varints_are_refused(raw: str) -> None:
    with pytest.raises(DecodeError, match="non-canonical"):
        decode_varint(bytes.fromhex(raw))


@pytest.mark.parametrize("raw", ["", "fd00", "fe000000", "ff00000000000000"])
def test_truncated_varints_are_refused(raw: str) -> None:
    with pytest.raises(DecodeError):
        decode_varint(bytes.fromhex(raw))


@pytest.mark.parametrize("n", [-1, 2**64])
def test_varint_range(n: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(n)


@pytest.mark.parametrize("size", [0, 1, 16, 75, 76, 255, 256, 65535, 65536])
def test_push_data_agrees_with_bitcoinlib(size: int) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    pushed = push_data(data)
    assert pushed == bytes(CScript([data]))
    assert len(pushed) == push_data_overhead(size) + size


def test_single_small_byte_is_pushed_as_data_not_op_n() -> None:
    assert push_data(b"\x05") == b"\x01\x05"


@given(st.integers(min_value=-2**63 + 1, max_value=2**63 - 1))
def test_script_num_round_trip(n: int) -> None:
    encoded = script_num(n)
    assert decode_script_num(encoded) == n
    if n >= 0:
        assert encoded == bn2vch(n)
    # Minimal: no encoding is shorter, and the last byte carries information.
    if encoded:
        assert encoded[-1] & 0x7F or (len(encoded) > 1 and encoded[-2] & 0x80)


@pytest.mark.parametrize("n, encoded", [(-1, "4f"), (0, "00"), (1, "51"), (16, "60"), (17, "0111"), (-2, "0182"),
                                        (-128, "028080"), (128, "028000")])
def test_push_int(n: int, encoded: str) -> None:
    assert push_int(n).hex() == encoded
