"""Pool difficulty <-> share target (STRATUM-SPEC §2.5): bdiff, exact for fractional difficulties."""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

DIFF1_TARGET = 0xFFFF << 208          # the nbits 0x1d00ffff target: "difficulty 1" in set_difficulty
MAX_TARGET = (1 << 256) - 1


@lru_cache(maxsize=4096)
def target_for_difficulty(difficulty: float) -> int:
    """share target = diff1 / difficulty, floored; Fraction keeps 1e-8 and 0.01 exact."""
    if not difficulty > 0:
        raise ValueError("difficulty must be positive")
    target = int(Fraction(DIFF1_TARGET) / Fraction(difficulty))
    return min(target, MAX_TARGET)


@lru_cache(maxsize=256)
def difficulty_for_target(target: int) -> float:
    if target <= 0:
        raise ValueError("target must be positive")
    return DIFF1_TARGET / target
