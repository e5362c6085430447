"""nBits, targets and difficulties (STRATUM-SPEC §2.5, §4.4), table-driven from bitcoin.json."""
from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from bitcoin.core.serialize import compact_from_uint256, uint256_from_compact
from hypothesis import given, strategies as st

from bitcoin_vectors import VECTORS
from pool.targets import DIFF1_TARGET, MAX_TARGET, TargetError, decode_compact, difficulty_to_target, \
    nbits_from_target, network_difficulty, share_difficulty, target_from_nbits, target_to_difficulty

NBITS = VECTORS["difficulty"]["nbits_examples"]
SHARE_TARGETS = VECTORS["difficulty"]["share_target_examples"]


def test_diff1_target_is_the_published_constant() -> None:
    assert DIFF1_TARGET == int(VECTORS["difficulty"]["diff1_target_bdiff"], 16) == 0xFFFF << 208


@pytest.mark.parametrize("case", NBITS, ids=[c["nbits"] for c in NBITS])
def test_nbits_to_target(case: dict) -> None:
    nbits = int(case["nbits"], 16)
    assert target_from_nbits(nbits) == int(case["target"], 16)
    assert target_from_nbits(nbits) == uint256_from_compact(nbits)


@pytest.mark.parametrize("case", NBITS, ids=[c["nbits"] for c in NBITS])
def test_network_difficulty_bdiff(case: dict) -> None:
    assert network_difficulty(int(case["nbits"], 16)) == pytest.approx(case["difficulty_bdiff"], rel=1e-15)


@pytest.mark.parametrize("case", NBITS, ids=[c["nbits"] for c in NBITS])
def test_target_back_to_nbits(case: dict) -> None:
    nbits = int(case["nbits"], 16)
    assert nbits_from_target(target_from_nbits(nbits)) == nbits


@pytest.mark.parametrize("case", SHARE_TARGETS, ids=[str(c["share_difficulty"]) for c in SHARE_TARGETS])
def test_share_targets(case: dict) -> None:
    target = int(case["target"], 16)
    assert difficulty_to_target(case["share_difficulty"]) == target
    assert difficulty_to_target(float(case["share_difficulty"])) == target
    assert target_to_difficulty(target) == case["share_difficulty"]


def test_share_difficulty_of_the_testnet_example_hash() -> None:
    example = VECTORS["stratum_worked_example_testnet3_25096"]
    assert share_difficulty(int(example["block_hash"], 16)) == pytest.approx(example["share_difficulty_of_hash"],
                                                                              rel=1e-15)
    assert share_difficulty(0) == math.inf


@pytest.mark.parametrize("nbits", [0x04923456, 0x01803456, 0x1D80FFFF])
def test_negative_compact_is_refused(nbits: int) -> None:
    assert decode_compact(nbits)[1]
    with pytest.raises(TargetError, match="negative"):
        target_from_nbits(nbits)


@pytest.mark.parametrize("nbits", [0xFF123456, 0x23000100, 0x22010000, 0x217FFFFF])
def test_overflowing_compact_is_refused(nbits: int) -> None:
    assert decode_compact(nbits)[2]
    with pytest.raises(TargetError, match="overflows"):
        target_from_nbits(nbits)


@pytest.mark.parametrize("nbits", [0x00000000, 0x1D000000, 0x01003456, 0x00123456])
def test_zero_compact_is_refused(nbits: int) -> None:
    with pytest.raises(TargetError, match="zero"):
        target_from_nbits(nbits)


def test_largest_encodable_target_is_not_overflow() -> None:
    # 0x207fffff (regtest) and the 32-byte-wide 0x2100ffff are fine; Core's overflow rule is about > 256 bits.
    assert target_from_nbits(0x2100FFFF) == 0xFFFF << 240


@pytest.mark.parametrize("difficulty, target", [
    (0.5, DIFF1_TARGET * 2),
    (Fraction(1, 3), DIFF1_TARGET * 3),
    (Decimal("0.01"), DIFF1_TARGET * 100),
    (Fraction(3, 2), DIFF1_TARGET * 2 // 3),
    (1e-8, (DIFF1_TARGET * Fraction(1e-8).denominator) // Fraction(1e-8).numerator),
])
def test_fractional_difficulties_are_exact(difficulty: int | float | Fraction | Decimal, target: int) -> None:
    assert difficulty_to_target(difficulty) == target


def test_tiny_difficulty_works_down_to_1e_8_and_then_clamps() -> None:
    target = difficulty_to_target(1e-8)
    assert target < MAX_TARGET
    assert target == pytest.approx(DIFF1_TARGET * 1e8, rel=1e-15)
    assert difficulty_to_target(1e-12) == MAX_TARGET
    assert difficulty_to_target(Fraction(1, 10**30)) == MAX_TARGET


@pytest.mark.parametrize("bad", [0, -1, 0.0, -0.5, float("nan"), float("inf"), True, "1"])
def test_unusable_difficulties_are_refused(bad: object) -> None:
    with pytest.raises(TargetError):
        difficulty_to_target(bad)  # type: ignore[arg-type]


def test_zero_target_has_no_difficulty() -> None:
    with pytest.raises(TargetError):
        target_to_difficulty(0)


@given(st.floats(min_value=1e-8, max_value=1e15, allow_nan=False, allow_infinity=False))
def test_difficulty_round_trips_through_target(difficulty: float) -> None:
    target = difficulty_to_target(difficulty)
    assert 0 < target <= MAX_TARGET
    assert target_to_difficulty(target) == pytest.approx(difficulty, rel=1e-12)


@given(st.floats(min_value=1e-8, max_value=1e15), st.floats(min_value=1e-8, max_value=1e15))
def test_harder_difficulty_never_gives_an_easier_target(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert difficulty_to_target(high) <= difficulty_to_target(low)


@given(st.integers(min_value=1, max_value=MAX_TARGET))
def test_compact_rounds_down_and_matches_bitcoinlib(target: int) -> None:
    nbits = nbits_from_target(target)
    assert nbits == compact_from_uint256(target)
    decoded = target_from_nbits(nbits)
    assert decoded <= target
    # The mantissa keeps the top bytes: the loss is below one unit of its last place.
    assert target - decoded < 256 ** max(0, (nbits >> 24) - 3)
