"""Vardiff against simulated miners of 1 kH/s to 100 TH/s: the share rate converges near the target."""
from __future__ import annotations

import random

import pytest

from stratum.vardiff import Vardiff, VardiffConfig

HASHES_PER_DIFF1 = 2 ** 32


def simulate(hashrate: float, cfg: VardiffConfig, start: float, hours: float, seed: int) -> tuple[float, float]:
    """Runs a Poisson miner event by event; returns (shares/s, median difficulty) over the last half."""
    rng = random.Random(seed)
    vd = Vardiff(cfg, start, 0.0)
    end = hours * 3600
    measured_from = end / 2
    shares_late = 0
    late_diffs: list[float] = []
    tick_every = 5.0                      # the server's sweep interval
    now, next_tick = 0.0, tick_every
    mining_diff = vd.difficulty
    pending: tuple[float, float] | None = None   # a new difficulty reaches the miner with its next job
    while now < end:
        # Poisson arrivals are memoryless: redrawing after each event is exact.
        next_share = now + rng.expovariate(hashrate / (mining_diff * HASHES_PER_DIFF1))
        events = [(next_share, "share"), (next_tick, "tick")]
        if pending:
            events.append((pending[0], "job"))
        now, kind = min(events)
        if kind == "job":
            mining_diff, pending = pending[1], None
            continue
        if kind == "tick":
            next_tick += tick_every
            new = vd.on_tick(now)
        else:
            if now >= measured_from:
                shares_late += 1
                late_diffs.append(mining_diff)
            new = vd.on_share(mining_diff, now)
        if new is not None:
            pending = (now + 0.5, new)
    late_diffs.sort()
    return shares_late / (end - measured_from), late_diffs[len(late_diffs) // 2]


@pytest.mark.parametrize("hashrate", [1e3, 1e6, 1e9, 14e12, 100e12])
def test_converges_within_20_percent(hashrate):
    cfg = VardiffConfig(target_s=10.0, min_difficulty=1e-8, max_difficulty=1e15)
    rate, diff = simulate(hashrate, cfg, start=1.0, hours=6, seed=int(hashrate) % 997)
    assert rate == pytest.approx(1 / cfg.target_s, rel=0.20), (rate, diff)
    assert diff == pytest.approx(hashrate * cfg.target_s / HASHES_PER_DIFF1, rel=0.25)


def test_declines_when_miner_stops():
    cfg = VardiffConfig(target_s=10.0, decline_after_s=60.0)
    vd = Vardiff(cfg, 1000.0, 0.0)
    assert vd.on_tick(30.0) is None
    lowered = vd.on_tick(61.0)
    assert lowered is not None and lowered <= 500.0
    # it keeps coming down while nothing arrives
    assert vd.on_tick(200.0) < lowered


def test_clamps_floor_and_network_ceiling():
    cfg = VardiffConfig(min_difficulty=0.001, max_difficulty=1e6)
    vd = Vardiff(cfg, 1.0, 0.0)
    vd.set_floor(50.0)
    assert vd.force(1.0, 0.0) == 50.0
    vd.set_network_ceiling(80.0)
    assert vd.force(1e9, 1.0) == 80.0
    for i in range(1, 200):           # a flood of shares cannot push it past the network difficulty
        vd.on_share(80.0, 1.0 + i * 1e-3)
    assert vd.difficulty == 80.0


def test_holds_steady_inside_hysteresis():
    cfg = VardiffConfig(target_s=10.0)
    vd = Vardiff(cfg, 100.0, 0.0)
    changes = [vd.on_share(100.0, t * 10.0) for t in range(1, 100)]   # exactly on target
    assert all(c is None for c in changes)
