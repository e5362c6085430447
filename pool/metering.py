"""The two places the pool is measured as things happen, for what cannot be read at scrape time.

- `MeteredShareSink` wraps the share sink the Stratum server calls: after a share is accepted (durable),
  its difficulty goes to `LoginWork`, a per-login sliding window of accepted work, which gives hashrate
  per login and for the pool (the admin status uses it, metrics export the top N logins).
- `JobFeedTimer` wraps the job feed's `on_template`: how long a new tip takes from the template's
  arrival in the job feed to the last `mining.notify` written (job building + fan-out), and how long
  every fan-out takes. Time spent by the source before the template reaches the feed (ZMQ, RPC) is
  not in it: that belongs to node RPC latency.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from prometheus_client import Histogram

if TYPE_CHECKING:
    from collections.abc import Sequence

    from stratum.interfaces import AcceptedShare, ShareSink
    from stratum.jobs import Job

    from .jobs import JobFeed
    from .template import BlockTemplate

HASHES_PER_DIFFICULTY = 2 ** 32        # expected hashes for one share of difficulty 1
# Job building is sub-millisecond; a fan-out to 100k sessions is tens of milliseconds.
JOB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoginWork:
    """Accepted difficulty per login in `bucket_s` buckets over the last `window_s` seconds.

    Memory is one small dict per login that submitted within the window; quiet logins are dropped.
    """

    def __init__(self, window_s: float = 600.0, bucket_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window_s < bucket_s or bucket_s <= 0:
            raise ValueError("LoginWork needs 0 < bucket_s <= window_s")
        self.window_s = window_s
        self.bucket_s = bucket_s
        self._buckets = max(1, round(window_s / bucket_s))
        self._clock = clock
        self._started = clock()
        self._work: dict[str, dict[int, float]] = {}

    def add(self, login: str, difficulty: float) -> None:
        index = int(self._clock() // self.bucket_s)
        per_login = self._work.setdefault(login, {})
        per_login[index] = per_login.get(index, 0.0) + difficulty

    def hashrates(self) -> dict[str, float]:
        """Hashes per second per login over the window (shorter while the process is young)."""
        now = self._clock()
        current = int(now // self.bucket_s)
        oldest = current - self._buckets + 1
        span = (self._buckets - 1) * self.bucket_s + (now - current * self.bucket_s)
        span = max(min(span, now - self._started), 1e-9)
        out: dict[str, float] = {}
        for login in list(self._work):
            buckets = self._work[login]
            for index in [i for i in buckets if i < oldest]:
                del buckets[index]
            if not buckets:
                del self._work[login]
                continue
            out[login] = sum(buckets.values()) * HASHES_PER_DIFFICULTY / span
        return out

    def top(self, n: int) -> list[tuple[str, float]]:
        return sorted(self.hashrates().items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def total(self) -> float:
        return sum(self.hashrates().values())


class MeteredShareSink:
    """A `ShareSink` that counts each accepted share's difficulty for its login, after the inner sink."""

    def __init__(self, inner: "ShareSink", work: LoginWork) -> None:
        self.inner = inner
        self.work = work

    async def accept_batch(self, shares: "Sequence[AcceptedShare]") -> "Sequence[int]":
        refused = await self.inner.accept_batch(shares)
        add = self.work.add
        skip = set(refused)
        for i, share in enumerate(shares):   # only once durable: what the miner was told `true` for
            if not skip or i not in skip:
                add(share.account.login, share.difficulty)
        return refused

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class JobFeedTimer:
    def __init__(self, feed: "JobFeed", last_fanout_s: Callable[[], float]) -> None:
        self.tip_to_notify = Histogram("kzpool_tip_to_notify_seconds", "Time from a new tip's template "
                                       "reaching the job feed to the last mining.notify written",
                                       buckets=JOB_BUCKETS, registry=None)
        self.fanout = Histogram("kzpool_notify_fanout_seconds", "Time to write one job to every session",
                                buckets=JOB_BUCKETS, registry=None)
        # Unix time of the last new tip; a timer built after the first job starts from that job.
        self.tip_at = feed.last_template_at if feed.template is not None else 0.0
        inner = feed.on_template
        last_fanout = last_fanout_s

        def on_template(template: "BlockTemplate") -> "Job":
            started = time.perf_counter()
            job = inner(template)
            if job.clean_jobs:
                self.tip_to_notify.observe(time.perf_counter() - started)
                self.tip_at = time.time()
            self.fanout.observe(last_fanout())
            return job

        feed.on_template = on_template   # type: ignore[method-assign]
