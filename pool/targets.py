"""Targets and difficulties: compact nBits, pool (bdiff) difficulty, share and network targets.

Difficulty 1 is the bdiff target 0xffff << 208 (DESIGN.md, STRATUM-SPEC §2.5). Difficulties may be
fractional (`mining.set_difficulty 0.01`), so conversions go through `Fraction` and stay exact: a float is
taken at its exact binary value, never rounded through a decimal string.
"""
from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

DIFF1_TARGET = 0xFFFF << 208
MAX_TARGET = 2**256 - 1

# Numbers a difficulty may arrive as: JSON gives int or float; config and tests may use the exact kinds.
Difficulty = int | float | Fraction | Decimal


class TargetError(ValueError):
    """A compact target or a difficulty that cannot be turned into a usable target."""


def decode_compact(nbits: int) -> tuple[int, bool, bool]:
    """Bitcoin Core's `arith_uint256::SetCompact`: (value, negative, overflow).

    The top byte is a base-256 exponent, the low 23 bits the mantissa; bit 0x00800000 is a sign bit, which
    makes the number negative when the mantissa is non-zero. Overflow means the value needs > 256 bits.
    """
    size = nbits >> 24
    word = nbits & 0x007FFFFF
    if size <= 3:
        value = word >> (8 * (3 - size))
    else:
        value = word << (8 * (size - 3))
    negative = word != 0 and bool(nbits & 0x00800000)
    overflow = word != 0 and (size > 34 or (word > 0xFF and size > 33) or (word > 0xFFFF and size > 32))
    return value, negative, overflow


def target_from_nbits(nbits: int) -> int:
    """The target an nBits field encodes; negative, zero or overflowing encodings are refused.

    Core's `DeriveTarget` refuses the same three, so a block carrying one can never be valid.
    """
    if not 0 <= nbits <= 0xFFFFFFFF:
        raise TargetError(f"nbits {nbits:#x} is not a uint32")
    value, negative, overflow = decode_compact(nbits)
    if negative:
        raise TargetError(f"nbits {nbits:08x} encodes a negative target")
    if overflow:
        raise TargetError(f"nbits {nbits:08x} overflows 256 bits")
    if value == 0:
        raise TargetError(f"nbits {nbits:08x} encodes a zero target")
    return value


def nbits_from_target(target: int) -> int:
    """Bitcoin Core's `GetCompact`: the compact form, rounding the target down to 3 significant bytes."""
    if not 0 < target <= MAX_TARGET:
        raise TargetError("target must be in 1..2**256-1")
    size = (target.bit_length() + 7) // 8
    if size <= 3:
        word = target << (8 * (3 - size))
    else:
        word = target >> (8 * (size - 3))
    # A mantissa with its top bit set would read back as negative: shift one byte into the exponent.
    if word & 0x00800000:
        word >>= 8
        size += 1
    return (size << 24) | word


def difficulty_to_target(difficulty: Difficulty) -> int:
    """Share target for a pool difficulty: floor(DIFF1 / difficulty), clamped to 2**256-1."""
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float, Fraction, Decimal)):
        raise TargetError(f"difficulty must be a number, got {type(difficulty).__name__}")
    if isinstance(difficulty, int):
        if difficulty <= 0:
            raise TargetError(f"difficulty must be positive, got {difficulty}")
        return DIFF1_TARGET // difficulty
    try:
        exact = Fraction(difficulty)
    except (TypeError, ValueError, OverflowError):
        raise TargetError(f"difficulty {difficulty!r} is not a finite number") from None
    if exact <= 0:
        raise TargetError(f"difficulty must be positive, got {difficulty}")
    target = (DIFF1_TARGET * exact.denominator) // exact.numerator
    return min(target, MAX_TARGET)


def target_to_difficulty(target: int) -> float:
    """The pool difficulty a target corresponds to (DIFF1 / target), correctly rounded to a float."""
    if target <= 0:
        raise TargetError("target must be positive")
    return DIFF1_TARGET / target    # int / int true division is correctly rounded in Python


def network_difficulty(nbits: int) -> float:
    """The bdiff difficulty of a compact target, as the Bitcoin wiki and `getdifficulty` give it."""
    return target_to_difficulty(target_from_nbits(nbits))


def share_difficulty(hash_int: int) -> float:
    """The difficulty a hash actually reached (for best-share stats); a zero hash is infinitely hard."""
    if hash_int <= 0:
        return float("inf")
    return DIFF1_TARGET / hash_int
