"""Share validation through PythonShareHasher on the published session and block 100000 (STRATUM-SPEC §4.2-§4.3)."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from bitcoin_vectors import VECTORS
from pool.hashing import dsha256
from pool.targets import difficulty_to_target, share_difficulty, target_from_nbits
from pool.validation import PythonShareHasher, hash_submission, header_from_job, version_from_bits
from stratum.interfaces import ShareHasher
from stratum.jobs import Job, Submission, prevhash_from_stratum_hex

SLUSH = VECTORS["stratum_worked_example_testnet3_25096"]
BLOCK_100K = VECTORS["stratum_shaped_block_100000"]
ROLLING = VECTORS["version_rolling_formula"]


def job_from_notify(params: list) -> Job:
    """A Job exactly as the miner saw it on the wire."""
    job_id, prevhash, coinb1, coinb2, branch, version, nbits, ntime, clean = params
    return Job(job_id=job_id, prevhash=prevhash_from_stratum_hex(prevhash), coinb1=bytes.fromhex(coinb1),
               coinb2=bytes.fromhex(coinb2), merkle_branch=tuple(bytes.fromhex(b) for b in branch),
               version=int(version, 16), nbits=int(nbits, 16), ntime=int(ntime, 16), clean_jobs=clean,
               network_target=target_from_nbits(int(nbits, 16)))


def submission_from_submit(job: Job, extranonce1: str, params: list, difficulty: float = 1) -> Submission:
    _worker, _job_id, extranonce2, ntime, nonce = params
    return Submission(bytes.fromhex(extranonce1), bytes.fromhex(extranonce2), int(ntime, 16), int(nonce, 16),
                      job.version, difficulty_to_target(difficulty))


@pytest.fixture
def hasher() -> ShareHasher:
    return PythonShareHasher()


def test_slush_session_is_a_block(hasher: ShareHasher) -> None:
    job = job_from_notify(SLUSH["notify_params"])
    sub = submission_from_submit(job, SLUSH["subscribe_result"][1], SLUSH["submit_params"])
    [result] = hasher.hash_batch(job, [sub])
    assert result.hash_display == SLUSH["block_hash"]
    assert result.meets_share and result.meets_network is SLUSH["meets_network_target"]
    assert share_difficulty(result.hash_int) == pytest.approx(SLUSH["share_difficulty_of_hash"], rel=1e-15)


def test_slush_header_bytes(hasher: ShareHasher) -> None:
    job = job_from_notify(SLUSH["notify_params"])
    sub = submission_from_submit(job, SLUSH["subscribe_result"][1], SLUSH["submit_params"])
    header = header_from_job(job, sub.extranonce1, sub.extranonce2, sub.ntime, sub.nonce, sub.version)
    assert header.hex() == SLUSH["header_hex"]
    assert job.prevhash[::-1].hex() == SLUSH["prevhash_display"]


def test_block_100000_job_is_a_block(hasher: ShareHasher) -> None:
    job = job_from_notify(BLOCK_100K["notify_params"])
    sub = submission_from_submit(job, BLOCK_100K["extranonce1"], BLOCK_100K["submit_params"])
    [result] = hasher.hash_batch(job, [sub])
    assert result.hash_display == BLOCK_100K["block_hash"]
    assert result.meets_share and result.meets_network
    assert header_from_job(job, sub.extranonce1, sub.extranonce2, sub.ntime, sub.nonce,
                           sub.version).hex() == BLOCK_100K["header_hex"]


def test_a_different_nonce_is_neither_block_nor_share(hasher: ShareHasher) -> None:
    job = job_from_notify(BLOCK_100K["notify_params"])
    sub = submission_from_submit(job, BLOCK_100K["extranonce1"], BLOCK_100K["submit_params"], difficulty=1000)
    [hit, miss] = hasher.hash_batch(job, [sub, Submission(sub.extranonce1, sub.extranonce2, sub.ntime,
                                                          sub.nonce + 1, sub.version, sub.share_target)])
    assert hit.meets_network and not miss.meets_network and not miss.meets_share


def test_the_nonce_is_packed_little_endian_from_big_endian_text() -> None:
    # STRATUM-SPEC §4.2: packing the nonce bytes as written (not as a number) misses the target.
    job = job_from_notify(SLUSH["notify_params"])
    sub = submission_from_submit(job, SLUSH["subscribe_result"][1], SLUSH["submit_params"])
    # Reading the hex as header bytes means the number is their little-endian value.
    raw_nonce = int.from_bytes(bytes.fromhex(SLUSH["submit_params"][4]), "little")
    wrong = hash_submission(job, Submission(sub.extranonce1, sub.extranonce2, sub.ntime, raw_nonce, sub.version,
                                            sub.share_target))
    assert not wrong.meets_network


def test_share_target_boundary_is_inclusive() -> None:
    job = job_from_notify(SLUSH["notify_params"])
    sub = submission_from_submit(job, SLUSH["subscribe_result"][1], SLUSH["submit_params"])
    value = hash_submission(job, sub).hash_int
    at = hash_submission(job, Submission(sub.extranonce1, sub.extranonce2, sub.ntime, sub.nonce, sub.version, value))
    below = hash_submission(job, Submission(sub.extranonce1, sub.extranonce2, sub.ntime, sub.nonce, sub.version,
                                            value - 1))
    assert at.meets_share and not below.meets_share


def test_batch_keeps_order_and_the_hasher_is_named_python(hasher: ShareHasher) -> None:
    job = job_from_notify(SLUSH["notify_params"])
    subs = [Submission(bytes(4), n.to_bytes(4, "big"), job.ntime, n, job.version, 2**256 - 1) for n in range(5)]
    results = hasher.hash_batch(job, subs)
    assert hasher.name == "python"
    assert [r.hash for r in results] == [hash_submission(job, s).hash for s in subs]
    assert len({r.hash for r in results}) == 5
    assert hasher.hash_batch(job, []) == []


def test_version_rolling_vector() -> None:
    version = version_from_bits(int(ROLLING["job_version"], 16), int(ROLLING["submit_version_bits"], 16),
                                int(ROLLING["mask"], 16))
    assert version == int(ROLLING["header_version"], 16)
    assert struct.pack("<I", version).hex() == ROLLING["header_version_bytes"]


def test_rolled_version_lands_in_the_header() -> None:
    job = job_from_notify(SLUSH["notify_params"])
    header = header_from_job(job, bytes(4), bytes(4), job.ntime, 0, 0x20002000)
    assert header[:4].hex() == ROLLING["header_version_bytes"]


@pytest.mark.parametrize("bits, mask", [(0x00001000, 0x1FFFE000), (0x20000000, 0x1FFFE000), (1, 0), (-1, 0xFFFFFFFF),
                                        (2**32, 0xFFFFFFFF)])
def test_version_bits_outside_the_mask_are_refused(bits: int, mask: int) -> None:
    assert version_from_bits(0x20000000, bits, mask) is None


@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=0, max_value=2**32 - 1),
       st.integers(min_value=0, max_value=2**32 - 1))
def test_version_rolling_only_touches_masked_bits(job_version: int, bits: int, mask: int) -> None:
    version = version_from_bits(job_version, bits & mask, mask)
    assert version is not None
    assert version & ~mask & 0xFFFFFFFF == job_version & ~mask & 0xFFFFFFFF
    assert version & mask == bits & mask


def test_hash_submission_matches_a_by_hand_rebuild() -> None:
    job = job_from_notify(BLOCK_100K["notify_params"])
    sub = Submission(b"\x06", b"\x02", job.ntime, 7, job.version, 2**256 - 1)
    assert hash_submission(job, sub).hash == dsha256(header_from_job(job, b"\x06", b"\x02", job.ntime, 7, 1))
