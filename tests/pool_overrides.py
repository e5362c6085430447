"""Config overrides shared by tests that run the whole pool on loopback (port 0, easy shares)."""
from __future__ import annotations

EASY_BLOCK_BITS = 0x207FFFFF      # regtest's limit: nearly every share is a block


def test_overrides(**extra: str) -> list[str]:
    sets = {"stratum.host": '"127.0.0.1"', "stratum.port": "0", "stratum.start_difficulty": "1e-6",
            "stratum.min_difficulty": "1e-8", "stratum.max_line_bytes": "4096"}
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


test_overrides.__test__ = False   # a helper, not a test
