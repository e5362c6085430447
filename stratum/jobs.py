"""Jobs and submissions as Stratum sees them: plain data, no Bitcoin node knowledge.

A `Job` carries exactly what `mining.notify` sends plus what the share check needs. The pool side
(`pool/`) builds jobs from block templates and may hang its own context on `context` (template,
transactions for block assembly); Stratum never looks inside it.

Byte-order conventions (see ../shared/STRATUM-SPEC.md §1.8, §7): every hash is kept as internal-order
bytes. `prevhash` is the 32 bytes exactly as they stand in the block header; the stratum word-swapped
hex is derived for the wire.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def prevhash_to_stratum_hex(prevhash_header: bytes) -> str:
    """Header-order prevhash bytes -> the stratum notify hex (each 4-byte word byte-swapped)."""
    if len(prevhash_header) != 32:
        raise ValueError("prevhash must be 32 bytes")
    return b"".join(prevhash_header[i:i + 4][::-1] for i in range(0, 32, 4)).hex()


def prevhash_from_stratum_hex(text: str) -> bytes:
    raw = bytes.fromhex(text)
    if len(raw) != 32:
        raise ValueError("prevhash must be 32 bytes")
    return b"".join(raw[i:i + 4][::-1] for i in range(0, 32, 4))


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    prevhash: bytes            # 32 bytes, header order (internal)
    coinb1: bytes
    coinb2: bytes
    merkle_branch: tuple[bytes, ...]   # each 32 bytes, internal order
    version: int               # the template's nVersion
    nbits: int
    ntime: int                 # the job's base time (template curtime)
    clean_jobs: bool
    network_target: int        # target from nbits, as an int
    height: int = 0
    min_ntime: int = 0         # the template's mintime; 0 = job ntime is the floor
    context: Any = field(default=None, compare=False, repr=False)

    def notify_params(self, job_id: str | None = None, clean_jobs: bool | None = None) -> list[Any]:
        """The 9 positional `mining.notify` params (STRATUM-SPEC §1.8)."""
        return [
            job_id if job_id is not None else self.job_id,
            prevhash_to_stratum_hex(self.prevhash),
            self.coinb1.hex(),
            self.coinb2.hex(),
            [h.hex() for h in self.merkle_branch],
            f"{self.version:08x}",
            f"{self.nbits:08x}",
            f"{self.ntime:08x}",
            self.clean_jobs if clean_jobs is None else clean_jobs,
        ]


@dataclass(frozen=True, slots=True)
class Submission:
    """One share to hash: everything the header needs beyond the job."""
    extranonce1: bytes
    extranonce2: bytes
    ntime: int
    nonce: int
    version: int               # final nVersion after version rolling
    share_target: int


@dataclass(frozen=True, slots=True)
class ShareResult:
    """Outcome of hashing one submission."""
    hash: bytes                # 32 bytes, internal order (header dSHA256 as computed)
    meets_share: bool
    meets_network: bool

    @property
    def hash_int(self) -> int:
        return int.from_bytes(self.hash, "little")

    @property
    def hash_display(self) -> str:
        return self.hash[::-1].hex()
