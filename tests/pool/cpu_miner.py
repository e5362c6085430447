"""A tiny nonce-looping miner for tests: finds a header under a target at easy difficulties."""
from __future__ import annotations

from stratum.jobs import Job, ShareResult, Submission

from pool.validation import hash_submission

MAX_TRIES = 1_000_000


def mine(job: Job, extranonce1: bytes, extranonce2: bytes, target: int, *, ntime: int | None = None,
         version: int | None = None, start_nonce: int = 0) -> tuple[int, ShareResult]:
    """(nonce, result) of the first nonce whose header hash is <= target."""
    ntime = job.ntime if ntime is None else ntime
    version = job.version if version is None else version
    for nonce in range(start_nonce, start_nonce + MAX_TRIES):
        result = hash_submission(job, Submission(extranonce1, extranonce2, ntime, nonce, version, target))
        if result.meets_share:
            return nonce, result
    raise AssertionError("no nonce found: target too hard for a test")


def miss(job: Job, extranonce1: bytes, extranonce2: bytes, target: int) -> int:
    """A nonce whose hash is above target (for negative tests)."""
    for nonce in range(MAX_TRIES):
        result = hash_submission(job, Submission(extranonce1, extranonce2, job.ntime, nonce, job.version, target))
        if not result.meets_share:
            return nonce
    raise AssertionError("every nonce met the target")
