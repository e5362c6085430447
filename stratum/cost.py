"""A decaying misbehaviour cost per session (the aiorpcX/ElectrumX idea, STYLE.md).

Every error or piece of junk adds cost; cost decays exponentially with a half-life. Past the soft
limit the server slows the session down; past the hard limit it closes it. Honest miners submit the
odd stale share after each block and never come near either limit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CostLimits:
    soft: float = 50.0          # cost at which reads from the session are delayed
    hard: float = 200.0         # cost at which the session is closed
    half_life_s: float = 60.0   # how fast forgiveness comes


# How much each kind of event costs; a stale share after a new block is almost free.
EVENT_COST = {
    "malformed_json": 10.0,
    "invalid_message": 10.0,
    "unknown_method": 2.0,
    "stale": 0.2,
    "duplicate": 5.0,
    "low_difficulty": 3.0,
    "bad_ntime": 3.0,
    "bad_version_bits": 3.0,
    "malformed_share": 5.0,
    "unauthorized": 5.0,
    "not_subscribed": 5.0,
    "auth_refused": 5.0,
    "other": 1.0,
}


class CostMeter:
    __slots__ = ("limits", "_cost", "_at")

    def __init__(self, limits: CostLimits, now: float) -> None:
        self.limits = limits
        self._cost = 0.0
        self._at = now

    def value(self, now: float) -> float:
        if now > self._at:
            self._cost *= math.pow(0.5, (now - self._at) / self.limits.half_life_s)
            self._at = now
        return self._cost

    def add(self, event: str, now: float) -> float:
        return self.add_amount(EVENT_COST.get(event, 1.0), now)

    def add_amount(self, amount: float, now: float) -> float:
        self._cost = self.value(now) + amount
        return self._cost

    def over_soft(self, now: float) -> bool:
        return self.value(now) >= self.limits.soft

    def over_hard(self, now: float) -> bool:
        return self.value(now) >= self.limits.hard
