"""Health of one Bitcoin Core node as plain data, with the exponential backoff it follows when failing.

`NodeHealth` is what metrics export per node (BitcoindSource.health() returns copies). Times are
time.monotonic() seconds, passed in so the rules are testable without sleeping.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Wait `initial_s` after the first failure, doubling per consecutive failure, never over `max_s`."""
    initial_s: float = 0.5      # a restarting node is often back within a second
    max_s: float = 30.0         # a dead node costs one connect attempt per 30 s, not a busy loop

    def delay_s(self, failures: int) -> float:
        return min(self.max_s, self.initial_s * 2 ** min(max(failures - 1, 0), 30))


@dataclass
class NodeHealth:
    name: str                    # host:port[/path], never credentials
    healthy: bool = False
    stale: bool = False          # its last template was behind the tip in use
    failures: int = 0            # consecutive failed calls
    last_error: str = ""
    last_ok_s: float = 0.0
    down_since_s: float = 0.0
    retry_at_s: float = 0.0
    height: int = -1             # height of the block its last template builds
    prev_hash: str = ""          # display hex of that template's previousblockhash
    templates: int = 0           # templates received from it

    def usable(self, now: float) -> bool:
        return self.healthy and self.retry_at_s <= now

    def record_ok(self, now: float) -> float | None:
        """Mark the node up; returns how long it was down when this is a recovery, else None."""
        recovered = None if self.healthy or not self.failures else now - self.down_since_s
        self.healthy, self.failures, self.last_ok_s, self.retry_at_s = True, 0, now, 0.0
        return recovered

    def record_failure(self, error: str, now: float, backoff: Backoff) -> float | None:
        """Count a failure and schedule the retry; returns the delay, or None when already scheduled.

        Several loops talk to one node; when they fail together only the first failure counts, so the
        backoff doubles once per retry round rather than once per loop.
        """
        if now < self.retry_at_s:
            return None
        self.healthy = False
        self.failures += 1
        self.last_error = error
        if self.failures == 1:
            self.down_since_s = now
        delay = backoff.delay_s(self.failures)
        self.retry_at_s = now + delay
        return delay
