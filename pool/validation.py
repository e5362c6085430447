"""Share validation, pure Python: rebuild the header a miner hashed and compare it with two targets.

STRATUM-SPEC §2.1-§2.3: coinbase = coinb1 + extranonce1 + extranonce2 + coinb2; its dSHA256 folded up the
merkle branch is the header's merkle root; the header hash, read as a little-endian 256-bit number, must
be <= the share target (a share) and may be <= the network target (a block).

`hash_submission` is the per-share unit the C extension replaces; `PythonShareHasher` is the reference
implementation of `stratum.interfaces.ShareHasher` that the C path must agree with bit for bit.
"""
from __future__ import annotations

from typing import Sequence

from stratum.jobs import Job, ShareResult, Submission

from .hashing import build_header, dsha256, merkle_root_from_branch

UINT32_MASK = 0xFFFFFFFF


def version_from_bits(job_version: int, version_bits: int, mask: int) -> int | None:
    """nVersion after BIP310 version rolling, or None when the miner set bits outside the mask.

    final = (job_version & ~mask) | (version_bits & mask); bits outside the negotiated mask are a
    protocol error the session answers with code 20 (STRATUM-SPEC §1.9, §2.3).
    """
    if not 0 <= version_bits <= UINT32_MASK or version_bits & ~mask & UINT32_MASK:
        return None
    return ((job_version & ~mask) | (version_bits & mask)) & UINT32_MASK


def header_from_job(job: Job, extranonce1: bytes, extranonce2: bytes, ntime: int, nonce: int,
                    version: int) -> bytes:
    """The 80-byte header a miner hashed for this job and these rolled fields."""
    coinbase_txid = dsha256(job.coinb1 + extranonce1 + extranonce2 + job.coinb2)
    merkle_root = merkle_root_from_branch(coinbase_txid, job.merkle_branch)
    return build_header(version, job.prevhash, merkle_root, ntime, job.nbits, nonce)


def hash_submission(job: Job, sub: Submission) -> ShareResult:
    """Hash one submission and classify it against its share target and the job's network target."""
    digest = dsha256(header_from_job(job, sub.extranonce1, sub.extranonce2, sub.ntime, sub.nonce, sub.version))
    value = int.from_bytes(digest, "little")
    return ShareResult(digest, value <= sub.share_target, value <= job.network_target)


class PythonShareHasher:
    """The hashlib reference `ShareHasher`."""
    name = "python"

    def hash_batch(self, job: Job, subs: Sequence[Submission]) -> list[ShareResult]:
        return [hash_submission(job, sub) for sub in subs]
