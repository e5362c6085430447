"""The C share hasher (pool._kzhash via pool.native) agrees bit for bit with the hashlib reference.

Every test that needs the extension runs once per SHA-256 backend the CPU supports (portable C, SHA-NI,
the AVX2 and AVX-512 share pipelines and their combinations), so fallback code is checked on a machine
that would never pick it. When the
extension is missing these tests skip, except under CI (CI=true) where a missing build is a failure:
CI has gcc and the Python headers, so a skip there would hide a broken build.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pool import native
from pool.hashing import build_header, dsha256, merkle_root_from_branch
from pool.validation import PythonShareHasher, version_from_bits
from stratum.jobs import Job, ShareResult, Submission, prevhash_from_stratum_hex

REPO_ROOT = Path(__file__).resolve().parents[1]
VECTOR_PATHS = (REPO_ROOT.parent / "shared" / "vectors" / "bitcoin.json",
                REPO_ROOT / "tests" / "vectors" / "bitcoin.json")
VECTORS: dict[str, Any] = json.loads(next(p for p in VECTOR_PATHS if p.is_file()).read_text())

DIFF1_TARGET = 0xFFFF << 208
# Enough random cases to cover lane groups and block boundaries; raise it for a long local run.
EXAMPLES = int(os.environ.get("KZPOOL_HYPOTHESIS_EXAMPLES", "150"))

kzhash, why_not = native.load_extension()
if kzhash is None and os.environ.get("CI") == "true" and not native.c_disabled_by_env():
    raise RuntimeError(f"C extension pool._kzhash not importable under CI: {why_not}")
needs_c = pytest.mark.skipif(kzhash is None, reason=f"C extension unavailable: {why_not}")

BACKENDS = list(kzhash.supported_backends()) if kzhash is not None else ["portable"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with one SHA-256 backend selected, then restore the automatic choice."""
    if kzhash is None:
        pytest.skip(f"C extension unavailable: {why_not}")
    kzhash.set_backend(request.param)
    try:
        yield request.param
    finally:
        kzhash.set_backend("auto")


def hashlib_dsha256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def job_from_notify(params: list[Any], network_target: int) -> Job:
    job_id, prevhash, coinb1, coinb2, branch, version, nbits, ntime, clean = params
    return Job(job_id=job_id, prevhash=prevhash_from_stratum_hex(prevhash), coinb1=bytes.fromhex(coinb1),
               coinb2=bytes.fromhex(coinb2), merkle_branch=tuple(bytes.fromhex(b) for b in branch),
               version=int(version, 16), nbits=int(nbits, 16), ntime=int(ntime, 16), clean_jobs=clean,
               network_target=network_target)


# ---------- raw primitives against hashlib and the shared vectors ----------

@pytest.mark.parametrize("length", list(range(0, 260)) + [1000, 4095, 65536, 70001])
def test_dsha256_and_sha256_match_hashlib_at_every_padding_boundary(backend: str, length: int) -> None:
    data = bytes((i * 7 + length) & 0xFF for i in range(length))
    assert kzhash.dsha256(data) == hashlib_dsha256(data) == dsha256(data)
    assert kzhash.sha256(data) == hashlib.sha256(data).digest()


@pytest.mark.parametrize("vector", VECTORS["block_headers"], ids=lambda v: v["name"])
def test_real_block_headers_hash_to_their_block_ids(backend: str, vector: dict[str, Any]) -> None:
    header = bytes.fromhex(vector["header_hex"])
    assert kzhash.dsha256(header)[::-1].hex() == vector["hash"]
    assert kzhash.hash_headers(header)[::-1].hex() == vector["hash"]


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 100])
def test_hash_headers_batch_matches_one_by_one(backend: str, count: int) -> None:
    headers = [os.urandom(80) for _ in range(count)]
    out = kzhash.hash_headers(b"".join(headers))
    assert [out[32 * i:32 * i + 32] for i in range(count)] == [hashlib_dsha256(h) for h in headers]
    assert kzhash.hash_headers(bytearray(b"".join(headers))) == out


def test_block_100000_merkle_root(backend: str) -> None:
    vector = VECTORS["stratum_shaped_block_100000"]
    coinb1, coinb2 = (bytes.fromhex(h) for h in vector["notify_params"][2:4])
    coinbase_txid = kzhash.dsha256(coinb1 + bytes.fromhex("06") + bytes.fromhex("02") + coinb2)
    assert coinbase_txid[::-1].hex() == vector["txids_display"][0]
    branch = [bytes.fromhex(h) for h in vector["notify_params"][4]]
    root = kzhash.merkle_root(coinbase_txid, branch)
    assert root == merkle_root_from_branch(coinbase_txid, branch)
    assert root[::-1].hex() == VECTORS["block_headers"][3]["merkleroot"]
    assert kzhash.merkle_root(coinbase_txid, []) == coinbase_txid


# ---------- whole shares: both hashers on the vectors ----------

def hashers() -> list[Any]:
    found: list[Any] = [PythonShareHasher()]
    if kzhash is not None:
        found.append(native.CShareHasher(kzhash))
    return found


def test_testnet_block_25096_share_in_both_paths(backend: str) -> None:
    vector = VECTORS["stratum_worked_example_testnet3_25096"]
    job = job_from_notify(vector["notify_params"], network_target=0x2AC4AF << (8 * (0x1C - 3)))
    _, _, extranonce2, ntime, nonce = vector["submit_params"]
    sub = Submission(bytes.fromhex(vector["subscribe_result"][1]), bytes.fromhex(extranonce2), int(ntime, 16),
                     int(nonce, 16), job.version, DIFF1_TARGET)
    results = [h.hash_batch(job, [sub]) for h in hashers()]
    assert results[0] == results[1]
    (result,) = results[1]
    assert result.hash_display == vector["block_hash"]
    assert result.meets_share and result.meets_network


def test_block_100000_share_in_both_paths(backend: str) -> None:
    vector = VECTORS["stratum_shaped_block_100000"]
    job = job_from_notify(vector["notify_params"], network_target=0x04864C << (8 * (0x1B - 3)))
    _, _, extranonce2, ntime, nonce = vector["submit_params"]
    sub = Submission(bytes.fromhex(vector["extranonce1"]), bytes.fromhex(extranonce2), int(ntime, 16),
                     int(nonce, 16), job.version, DIFF1_TARGET)
    python_result, c_result = (h.hash_batch(job, [sub]) for h in hashers())
    assert python_result == c_result
    assert c_result[0].hash_display == vector["block_hash"]
    assert c_result[0].meets_network


def test_target_equal_to_hash_meets_and_one_below_does_not(backend: str) -> None:
    job = Job("j", os.urandom(32), os.urandom(70), os.urandom(90), (os.urandom(32),), 0x20000000,
              0x1D00FFFF, 0, False, network_target=0)
    base = Submission(b"\x01\x02\x03\x04", b"\x00" * 8, 100, 7, 0x20000000, 0)
    hash_int = PythonShareHasher().hash_batch(job, [base])[0].hash_int
    for share_target, network_target, expected in [(hash_int, hash_int - 1, (True, False)),
                                                   (hash_int - 1, hash_int, (False, True)),
                                                   (2**256 - 1, 2**300, (True, True)),
                                                   (-1, 0, (False, False))]:
        sub = Submission(base.extranonce1, base.extranonce2, base.ntime, base.nonce, base.version, share_target)
        exact_job = Job(job.job_id, job.prevhash, job.coinb1, job.coinb2, job.merkle_branch, job.version,
                        job.nbits, job.ntime, False, network_target=network_target)
        for hasher in hashers():
            (result,) = hasher.hash_batch(exact_job, [sub])
            assert (result.meets_share, result.meets_network) == expected, hasher.name


# ---------- random inputs: the property test ----------

@st.composite
def jobs_and_batches(draw: st.DrawFn) -> tuple[Job, int, list[tuple[bytes, bytes, int, int, int, int]]]:
    """A job with random coinbase parts and a 0..16-level branch, a version mask, and a batch of
    submissions whose extranonce lengths, version bits and targets all vary."""
    job = Job(
        job_id="p",
        prevhash=draw(st.binary(min_size=32, max_size=32)),
        coinb1=draw(st.binary(max_size=300)),
        coinb2=draw(st.binary(max_size=300)),
        merkle_branch=tuple(draw(st.lists(st.binary(min_size=32, max_size=32), max_size=16))),
        version=draw(st.integers(0, 2**32 - 1)),
        nbits=draw(st.integers(0, 2**32 - 1)),
        ntime=0,
        clean_jobs=False,
        network_target=draw(st.one_of(st.integers(0, 2**256 - 1), st.integers(2**248, 2**256 - 1))),
    )
    mask = draw(st.sampled_from([0, 0x1FFFE000, 0xFFFFFFFF])) | draw(st.integers(0, 2**32 - 1)) & \
        draw(st.sampled_from([0, 0xFFFFFFFF]))
    en1_len = draw(st.integers(0, 16))
    subs = draw(st.lists(st.tuples(
        st.one_of(st.just(en1_len), st.integers(0, 70)).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
        st.binary(max_size=16),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.one_of(st.integers(0, 2**256 - 1), st.integers(2**200, 2**256 - 1), st.just(DIFF1_TARGET)),
    ), min_size=1, max_size=40))
    return job, mask, subs


@needs_c
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=jobs_and_batches(), backend_name=st.sampled_from(BACKENDS))
def test_c_and_python_agree_on_random_jobs(case: tuple[Job, int, list[Any]], backend_name: str) -> None:
    job, mask, raw_subs = case
    subs = []
    for extranonce1, extranonce2, ntime, nonce, version_bits, share_target in raw_subs:
        version = version_from_bits(job.version, version_bits & mask, mask)
        assert version is not None
        subs.append(Submission(extranonce1, extranonce2, ntime, nonce, version, share_target))
    previous = kzhash.set_backend(backend_name)
    try:
        c_results = native.CShareHasher(kzhash).hash_batch(job, subs)
        rolled = kzhash.validate_batch(
            job.coinb1, job.coinb2, job.merkle_branch, job.version, job.prevhash, job.nbits,
            job.network_target.to_bytes(32, "little"),
            [(s.extranonce1, s.extranonce2, s.ntime, s.nonce, bits, s.share_target.to_bytes(32, "little"))
             for s, (_, _, _, _, bits, _) in zip(subs, raw_subs)],
            version_mask=mask)
    finally:
        kzhash.set_backend(previous)
    python_results = PythonShareHasher().hash_batch(job, subs)
    assert c_results == python_results
    # The tuple form with version rolling done in C gives the same answers.
    assert [ShareResult(*r) for r in rolled] == python_results
    # And each hash is the dSHA256 of the header the reference builds.
    for sub, result in zip(subs, c_results):
        root = merkle_root_from_branch(dsha256(job.coinb1 + sub.extranonce1 + sub.extranonce2 + job.coinb2),
                                       job.merkle_branch)
        header = build_header(sub.version, job.prevhash, root, sub.ntime, job.nbits, sub.nonce)
        assert result.hash == hashlib_dsha256(header)


# ---------- API shapes ----------

def test_validate_batch_returns_tuples_without_result_type(backend: str) -> None:
    sub = (b"\xaa" * 4, b"\xbb" * 8, 1, 2, 3, DIFF1_TARGET)
    (result,) = kzhash.validate_batch(b"c1", b"c2", [], 3, bytes(32), 0x1D00FFFF, 0, [sub])
    header = struct.pack("<I", 3) + bytes(32) + hashlib_dsha256(b"c1" + sub[0] + sub[1] + b"c2") + \
        struct.pack("<III", 1, 0x1D00FFFF, 2)
    assert result == (hashlib_dsha256(header), int.from_bytes(hashlib_dsha256(header), "little") <= DIFF1_TARGET,
                      False)


def test_result_type_that_is_not_a_plain_dataclass_is_called(backend: str) -> None:
    calls: list[tuple[Any, ...]] = []

    def factory(*args: Any) -> tuple[Any, ...]:
        calls.append(args)
        return args

    subs = [(b"", b"", 0, n, 0, 0) for n in range(3)]
    out = kzhash.validate_batch(b"", b"", [], 0, bytes(32), 0, 0, subs, result_type=factory)
    assert out == calls == kzhash.validate_batch(b"", b"", [], 0, bytes(32), 0, 0, subs)


def test_empty_batch_gives_empty_list(backend: str) -> None:
    assert kzhash.validate_batch(b"", b"", [], 0, bytes(32), 0, 0, []) == []
    assert native.CShareHasher(kzhash).hash_batch(job_from_notify(
        VECTORS["stratum_shaped_block_100000"]["notify_params"], 0), []) == []


@needs_c
def test_hashing_releases_the_gil() -> None:
    """While one thread hashes a large batch in C, another thread keeps running Python code."""
    subs = [(b"\x01" * 4, n.to_bytes(8, "little"), 0, n, 0, 0) for n in range(200_000)]
    window: dict[str, float] = {}

    def worker() -> None:
        window["start"] = time.perf_counter()
        kzhash.validate_batch(os.urandom(80), os.urandom(120), [os.urandom(32)] * 12, 0, bytes(32), 0, 0, subs)
        window["end"] = time.perf_counter()

    thread = threading.Thread(target=worker)
    ticks: list[float] = []
    thread.start()
    while thread.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    thread.join()
    assert window["end"] - window["start"] > 0.05, "batch too small to observe"
    inside = [t for t in ticks if window["start"] + 0.01 < t < window["end"] - 0.01]
    assert inside, "the main thread never ran while the batch was being hashed"


# ---------- choosing a hasher ----------

def test_no_c_env_forces_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KZPOOL_NO_C", "1")
    assert native.load_extension() == (None, "KZPOOL_NO_C=1")
    assert isinstance(native.select_hasher(), PythonShareHasher)


@needs_c
def test_c_is_selected_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KZPOOL_NO_C", raising=False)
    hasher = native.select_hasher()
    assert hasher.name == "c"
    assert hasher.backend in kzhash.supported_backends()
    features = kzhash.cpu_features()
    if features["avx512f"] and features["sha_ni"]:
        assert hasher.backend == "avx512+sha-ni"
    elif features["sha_ni"]:
        assert hasher.backend == "sha-ni"


def test_choice_is_logged_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(native, "_announced", False)
    with caplog.at_level("INFO", logger="kzpool.native"):
        native.select_hasher()
        native.select_hasher()
    lines = [r.getMessage() for r in caplog.records if r.name == "kzpool.native"]
    assert len(lines) == 1 and lines[0].startswith("share_hasher name=")


def test_unknown_backend_is_refused() -> None:
    if kzhash is None:
        pytest.skip(f"C extension unavailable: {why_not}")
    with pytest.raises(ValueError):
        kzhash.set_backend("avx9000")
    with pytest.raises(TypeError):
        kzhash.set_backend(1)
    with pytest.raises(ValueError):
        kzhash.set_backend("")
    assert kzhash.backend() in kzhash.supported_backends()


def test_every_backend_the_cpu_reports_is_selectable() -> None:
    if kzhash is None:
        pytest.skip(f"C extension unavailable: {why_not}")
    supported = kzhash.supported_backends()
    assert "portable" in supported
    assert ("sha-ni" in supported) == kzhash.cpu_features()["sha_ni"] == kzhash.cpu_has_sha_ni()
    assert ("avx512" in supported) == kzhash.cpu_features()["avx512f"]
    assert ("avx2" in supported) == kzhash.cpu_features()["avx2"]
    for name in supported:
        previous = kzhash.set_backend(name)
        try:
            assert kzhash.backend() == name
        finally:
            kzhash.set_backend(previous)


# ---------- the benchmark command ----------

OPENSSL_SPEED_SAMPLE = """Doing sha256 for 1s on 16 size blocks: 10893381 sha256's in 1.00s
version: 3.0.19
The 'numbers' are in 1000s of bytes per second processed.
type             16 bytes     64 bytes    256 bytes   1024 bytes   8192 bytes  16384 bytes
sha256          174294.10k   516391.62k  1188457.22k  1767014.40k  2059990.11k  2120335.36k
"""


def test_openssl_speed_output_is_parsed_by_block_size() -> None:
    from pool.bench_hashing import parse_openssl_speed
    rates = parse_openssl_speed(OPENSSL_SPEED_SAMPLE)
    assert rates is not None
    assert rates[64] == pytest.approx(516_391_620)
    assert rates[16384] == pytest.approx(2_120_335_360)
    assert parse_openssl_speed("no table here") is None


def test_bench_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    from pool.bench_hashing import main
    assert main(["--json", "--no-openssl", "--shares", "20", "--repeat", "1", "--min-seconds", "0.001"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["hashlib_shares_per_s"] > 0
    assert set(report["shares"]) == {"0", "12"}
    if kzhash is not None:
        for key in ("c_single_shares_per_s", "c_batch_shares_per_s", "ratio_batch_vs_hashlib"):
            assert report[key] > 0
        assert report["headers"]["c_headers_per_s"] > 0


def test_bench_text_output_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from pool.bench_hashing import main
    assert main(["--no-openssl", "--shares", "20", "--repeat", "1", "--min-seconds", "0.001"]) == 0
    assert "hashlib" in capsys.readouterr().out
