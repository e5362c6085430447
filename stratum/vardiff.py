"""Per-connection variable difficulty (STRATUM-SPEC §5), sans-IO: the caller passes the time.

The estimator counts difficulty-weighted shares (each share counts the difficulty it was accepted at),
so shares still arriving at an old difficulty after a change are measured correctly. It retargets
quickly when a window holds many shares (a fast miner at a low start difficulty floods) and otherwise
once per `retarget_s`; a change is made only when the estimate leaves the hysteresis band, so a miner
at the right difficulty is left alone. A miner that stops submitting is lowered after
`decline_after_s` (decline-safe), so a rig that slowed down is not stuck at an unreachable difficulty.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VardiffConfig:
    target_s: float = 10.0          # seconds per share aimed at, per connection
    retarget_s: float = 60.0        # a window this old is judged even with few shares
    fast_shares: int = 24           # a window with this many shares is judged at once
    min_window_shares: int = 4      # below this, a time-based judgement is too noisy (except decline)
    hysteresis: float = 0.25        # keep the difficulty while the estimate is within ±25%
    decline_after_s: float = 60.0   # no share for this long: lower the difficulty
    min_difficulty: float = 1e-8
    max_difficulty: float = 1e15

    def __post_init__(self) -> None:
        if self.target_s <= 0 or self.retarget_s <= 0 or self.decline_after_s <= 0:
            raise ValueError("vardiff times must be positive")
        if not 0 < self.min_difficulty <= self.max_difficulty:
            raise ValueError("vardiff needs 0 < min_difficulty <= max_difficulty")
        if not 0 <= self.hysteresis < 1:
            raise ValueError("vardiff hysteresis must be in [0, 1)")


class Vardiff:
    __slots__ = ("cfg", "difficulty", "_floor", "_ceiling", "_window_start", "_shares", "_work",
                 "_last_share")

    def __init__(self, cfg: VardiffConfig, start_difficulty: float, now: float) -> None:
        self.cfg = cfg
        self._floor = cfg.min_difficulty
        self._ceiling = cfg.max_difficulty
        self.difficulty = self._clamp(start_difficulty)
        self._reset(now)
        self._last_share = now

    def _reset(self, now: float) -> None:
        self._window_start = now
        self._shares = 0
        self._work = 0.0

    def _clamp(self, diff: float) -> float:
        return min(max(diff, self._floor), max(self._ceiling, self._floor))

    @property
    def floor(self) -> float:
        return self._floor

    def set_floor(self, miner_minimum: float) -> None:
        """The miner's suggestion or minimum-difficulty, kept inside the pool's own bounds."""
        self._floor = min(max(miner_minimum, self.cfg.min_difficulty), self.cfg.max_difficulty)

    def set_network_ceiling(self, network_difficulty: float) -> None:
        # A share above network difficulty would be worth more than a block: never ask for it.
        self._ceiling = max(self.cfg.min_difficulty, min(self.cfg.max_difficulty, network_difficulty))

    def force(self, difficulty: float, now: float) -> float | None:
        """Sets the difficulty (e.g. from suggest_difficulty); returns it when it changed."""
        new = self._clamp(difficulty)
        self._reset(now)
        if new == self.difficulty:
            return None
        self.difficulty = new
        return new

    def on_share(self, share_difficulty: float, now: float) -> float | None:
        """Records an accepted share; returns the new difficulty when a retarget is due."""
        self._shares += 1
        self._work += share_difficulty
        self._last_share = now
        elapsed = now - self._window_start
        if self._shares >= self.cfg.fast_shares or (
                elapsed >= self.cfg.retarget_s and self._shares >= self.cfg.min_window_shares):
            return self._judge(elapsed, now)
        return None

    def on_tick(self, now: float) -> float | None:
        """Called periodically; lowers the difficulty of a connection that went quiet."""
        elapsed = now - self._window_start
        quiet = now - self._last_share
        if quiet < self.cfg.decline_after_s or elapsed < self.cfg.decline_after_s:
            return None
        if self._shares == 0:
            # Nothing at all for a while: the rig died or the difficulty is far too high. Come down
            # at least by half per tick so even a 1 kH/s CPU reaches its level within minutes.
            estimate = self.difficulty * self.cfg.target_s / elapsed
            return self._change(min(estimate, self.difficulty / 2), now)
        # Some shares, then a long gap: (k+1) shares bounds the work rate from above, so lowering to
        # that bound never overshoots; a lucky gap of an honest miner stays inside the hysteresis.
        estimate = (self._work + self.difficulty) / elapsed * self.cfg.target_s
        if estimate < self.difficulty * (1 - self.cfg.hysteresis):
            return self._change(estimate, now)
        return None

    def _judge(self, elapsed: float, now: float) -> float | None:
        if elapsed <= 0:
            return None
        estimate = self._work / elapsed * self.cfg.target_s
        ratio = estimate / self.difficulty
        h = self.cfg.hysteresis
        if 1 - h <= ratio <= 1 + h:
            if elapsed >= 10 * self.cfg.retarget_s:
                self._reset(now)   # forget old history so the estimate keeps tracking the rig
            return None
        return self._change(estimate, now)

    def _change(self, estimate: float, now: float) -> float | None:
        new = self._clamp(estimate)
        self._reset(now)
        if new == self.difficulty:
            return None
        self.difficulty = new
        return new
