"""`mining.submit` checks, cheapest first (STRATUM-SPEC §2.4), ending in a `SubmitCheck` to hash.

Order: not subscribed 25 (the session's state table), unknown worker 24, unknown or stale job 21,
malformed hex or wrong lengths 20, ntime window 20, version bits outside the negotiated mask 20,
duplicate 22. The share-target comparison (23) needs the hash and happens after hashing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ErrorCode, StratumError
from .jobs import Job, Submission
from .messages import MessageId, Request

if TYPE_CHECKING:
    from .session import Session


@dataclass(frozen=True, slots=True)
class SubmitCheck:
    """A share that passed every cheap check and now needs hashing."""
    msg_id: MessageId
    worker: str
    job: Job
    job_id: str            # as the miner sent it (may be a re-issued id)
    submission: Submission
    difficulty: float      # in force when the job was sent to this session


def _fixed_hex(value: str, size: int, what: str) -> bytes:
    if len(value) != 2 * size:
        raise StratumError(ErrorCode.OTHER, f"{what} must be {size} bytes of hex", "malformed_share")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise StratumError(ErrorCode.OTHER, f"{what} is not hex", "malformed_share") from None


def check_submit(req: Request, session: "Session", now: float) -> SubmitCheck:
    p = req.params
    if len(p) < 5 or len(p) > 6 or not all(isinstance(x, str) for x in p):
        raise StratumError(ErrorCode.OTHER, "submit expects 5 or 6 string params", "malformed_share")
    worker, job_id, en2_hex, ntime_hex, nonce_hex = p[:5]
    if worker not in session.workers:
        raise StratumError(ErrorCode.UNAUTHORIZED_WORKER, "Unauthorized worker", "unauthorized")
    found = session.job_difficulty(job_id)
    if found is None:
        raise StratumError(ErrorCode.JOB_NOT_FOUND, "Job not found (stale)", "stale")
    job, difficulty = found
    extranonce2 = _fixed_hex(en2_hex, session.cfg.extranonce2_size, "extranonce2")
    ntime = int.from_bytes(_fixed_hex(ntime_hex, 4, "ntime"), "big")
    nonce = int.from_bytes(_fixed_hex(nonce_hex, 4, "nonce"), "big")
    earliest = job.min_ntime or job.ntime
    if not earliest <= ntime <= job.ntime + session.cfg.ntime_future_s:
        raise StratumError(ErrorCode.OTHER, "ntime out of range", "bad_ntime")
    version = job.version
    if len(p) == 6:
        bits = int.from_bytes(_fixed_hex(p[5], 4, "version_bits"), "big")
        mask = session.version_mask
        if bits & ~mask & 0xFFFFFFFF:
            raise StratumError(ErrorCode.OTHER, "version bits outside the negotiated mask", "bad_version_bits")
        version = (job.version & ~mask) | (bits & mask)
    assert session.extranonce1 is not None
    if not session.jobs.first_sighting(job.job_id, (session.extranonce1, extranonce2, ntime, nonce, version)):
        raise StratumError(ErrorCode.DUPLICATE_SHARE, "Duplicate share", "duplicate")
    sub = Submission(session.extranonce1, extranonce2, ntime, nonce, version, session.share_target(difficulty))
    return SubmitCheck(req.id, worker, job, job_id, sub, difficulty)
