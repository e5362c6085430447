"""Malformed input to every C entry point of pool._kzhash raises TypeError/ValueError, never crashes.

Run once under valgrind or AddressSanitizer to check that no path reads out of bounds or leaks
(docs/benchmarks-hashing.md has the commands and the result).
"""
from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pool import native

kzhash, why_not = native.load_extension()
pytestmark = pytest.mark.skipif(kzhash is None, reason=f"C extension unavailable: {why_not}")

EXAMPLES = int(os.environ.get("KZPOOL_HYPOTHESIS_EXAMPLES", "150"))

GOOD_SUB = (b"\x01" * 4, b"\x02" * 8, 1, 2, 3, 2**255)
GOOD_JOB: dict[str, Any] = dict(coinb1=b"\xaa" * 70, coinb2=b"\xbb" * 90, merkle_branch=[b"\xcc" * 32] * 3,
                                version=0x20000000, prevhash=b"\xdd" * 32, nbits=0x1D00FFFF,
                                network_target=2**224)
JOB_ORDER = ["coinb1", "coinb2", "merkle_branch", "version", "prevhash", "nbits", "network_target"]


def call(job: dict[str, Any] | None = None, subs: Any = (GOOD_SUB,), **kwargs: Any) -> Any:
    args = {**GOOD_JOB, **(job or {})}
    return kzhash.validate_batch(*(args[k] for k in JOB_ORDER), subs, **kwargs)


def test_good_call_works() -> None:
    (result,) = call()
    assert len(result[0]) == 32


@pytest.mark.parametrize("field,value", [
    ("coinb1", "aa"), ("coinb1", None), ("coinb1", 5), ("coinb2", ["x"]),
    ("merkle_branch", 5), ("merkle_branch", None), ("merkle_branch", b"\x00" * 32),
    ("merkle_branch", "ab" * 32), ("merkle_branch", [5]), ("merkle_branch", ["00" * 32]),
    ("version", 1.0), ("version", "1"), ("version", None), ("nbits", b"\x00" * 4),
    ("prevhash", "00" * 32), ("prevhash", None), ("network_target", 1.5), ("network_target", "ff"),
])
def test_wrong_job_types_raise_type_error(field: str, value: Any) -> None:
    with pytest.raises(TypeError):
        call({field: value})


@pytest.mark.parametrize("field,value", [
    ("prevhash", b"\x00" * 31), ("prevhash", b"\x00" * 33), ("prevhash", b""),
    ("merkle_branch", [b"\x00" * 31]), ("merkle_branch", [b"\x00" * 32, b"\x00" * 33]),
    ("merkle_branch", [b"\x00" * 32] * 65), ("network_target", b"\xff" * 31),
    ("coinb1", b"\x00" * 4_000_001),
])
def test_wrong_job_lengths_raise_value_error(field: str, value: Any) -> None:
    with pytest.raises(ValueError):
        call({field: value})


@pytest.mark.parametrize("sub", [
    (b"", b"", 0, 0, 0), (b"", b"", 0, 0, 0, 0, 0), (),
])
def test_wrong_tuple_size_raises_value_error(sub: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        call(subs=[sub])


@pytest.mark.parametrize("sub", [
    ("aa", b"", 0, 0, 0, 0), (b"", None, 0, 0, 0, 0), (b"", b"", 1.0, 0, 0, 0), (b"", b"", 0, "1", 0, 0),
    (b"", b"", 0, 0, None, 0), (b"", b"", 0, 0, 0, 1.0), (b"", b"", 0, 0, 0, "00"), None, 5, b"abc",
    object(),
])
def test_wrong_submission_types_raise_type_error(sub: Any) -> None:
    with pytest.raises(TypeError):
        call(subs=[sub])


@pytest.mark.parametrize("subs", [None, 5, b"\x00" * 6, "abcdef", 1.5])
def test_subs_that_are_not_a_sequence_raise_type_error(subs: Any) -> None:
    with pytest.raises(TypeError):
        call(subs=subs)


def test_share_target_of_wrong_byte_length_raises_value_error() -> None:
    with pytest.raises(ValueError):
        call(subs=[(b"", b"", 0, 0, 0, b"\xff" * 33)])


def test_batch_over_the_limit_raises_value_error_before_allocating() -> None:
    with pytest.raises(ValueError):
        call(subs=[GOOD_SUB] * (kzhash.MAX_BATCH + 1))


def test_batch_at_the_limit_of_one_call_works() -> None:
    subs = [GOOD_SUB] * 50_000
    out = call(subs=subs)
    assert len(out) == len(subs) and out[0] == out[-1]


def test_bytes_like_inputs_are_accepted_and_agree() -> None:
    plain = call()
    views = call({"coinb1": bytearray(GOOD_JOB["coinb1"]), "coinb2": memoryview(GOOD_JOB["coinb2"]),
                  "prevhash": bytearray(GOOD_JOB["prevhash"]),
                  "merkle_branch": tuple(memoryview(b) for b in GOOD_JOB["merkle_branch"])},
                 subs=[(bytearray(GOOD_SUB[0]), memoryview(GOOD_SUB[1]), *GOOD_SUB[2:])])
    assert plain == views


def test_non_contiguous_buffer_raises_type_error() -> None:
    strided = memoryview(b"\x00" * 64)[::2]
    with pytest.raises(TypeError):
        call({"prevhash": strided})


def test_out_of_range_header_ints_are_masked_like_build_header() -> None:
    assert call(subs=[(b"", b"", 2**32 + 5, -1, 2**40, 0)]) == \
        call(subs=[(b"", b"", 5, 0xFFFFFFFF, 0, 0)])


def test_missing_attributes_on_submission_objects_raise_type_error() -> None:
    class Partial:
        extranonce1 = b""
        extranonce2 = b""
        ntime = 0

    with pytest.raises(TypeError):
        call(subs=[Partial()])


def test_mutating_the_batch_from_an_attribute_getter_is_safe() -> None:
    """The C side works on a snapshot: code run while reading a submission cannot pull items away."""
    subs: list[Any] = []

    class Evil:
        extranonce1 = b"\x01"
        extranonce2 = b"\x02"
        ntime = 0
        nonce = 0
        version = 0

        @property
        def share_target(self) -> int:
            subs.clear()
            return 0

    subs.extend([Evil(), GOOD_SUB, Evil()])
    out = call(subs=subs)
    assert len(out) == 3


def test_errors_raised_by_the_caller_s_objects_propagate() -> None:
    class Broken:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        call(subs=[Broken()])


@pytest.mark.parametrize("bad", [b"\x00" * 79, b"\x00" * 81, "00" * 80, None, 80])
def test_hash_headers_rejects_bad_input(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        kzhash.hash_headers(bad)


def test_hash_headers_over_the_limit_raises_value_error() -> None:
    with pytest.raises(ValueError):
        kzhash.hash_headers(bytes(80 * (kzhash.MAX_BATCH + 1)))


@pytest.mark.parametrize("bad", ["abc", None, 5, [b"a"]])
def test_dsha256_rejects_non_bytes(bad: Any) -> None:
    with pytest.raises(TypeError):
        kzhash.dsha256(bad)
    with pytest.raises(TypeError):
        kzhash.sha256(bad)


@pytest.mark.parametrize("coinbase_hash,branch,error", [
    (b"\x00" * 31, [], ValueError), (b"\x00" * 32, [b"\x00" * 31], ValueError), ("00" * 32, [], TypeError),
    (b"\x00" * 32, None, TypeError), (b"\x00" * 32, [None], TypeError), (b"\x00" * 32, [b"\x00" * 32] * 65, ValueError),
])
def test_merkle_root_rejects_bad_input(coinbase_hash: Any, branch: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        kzhash.merkle_root(coinbase_hash, branch)


def test_every_parameter_can_be_given_by_keyword() -> None:
    assert kzhash.validate_batch(**GOOD_JOB, subs=[GOOD_SUB], version_mask=0xFFFFFFFF, result_type=None) == call()


def test_wrong_argument_counts_and_keywords_raise_type_error() -> None:
    with pytest.raises(TypeError):     # subs twice: positionally and by keyword
        kzhash.validate_batch(*(GOOD_JOB[k] for k in JOB_ORDER), [GOOD_SUB], subs=[GOOD_SUB])
    with pytest.raises(TypeError):
        kzhash.validate_batch(*(GOOD_JOB[k] for k in JOB_ORDER), [GOOD_SUB], 0xFFFFFFFF)   # 9 positional
    with pytest.raises(TypeError):
        kzhash.validate_batch(**{k: GOOD_JOB[k] for k in JOB_ORDER})                    # subs missing
    with pytest.raises(TypeError):
        kzhash.validate_batch()
    with pytest.raises(TypeError):
        kzhash.validate_batch(b"", b"")
    with pytest.raises(TypeError):
        call(version_mask="all")
    with pytest.raises(TypeError):
        call(result_type=5)
    with pytest.raises(TypeError):
        call(colour="red")
    with pytest.raises(TypeError):
        kzhash.merkle_root(b"\x00" * 32)


# Anything at all in any argument position: the call either works or raises TypeError/ValueError.
junk = st.one_of(
    st.none(), st.integers(-2**300, 2**300), st.floats(allow_nan=False), st.text(max_size=40),
    st.binary(max_size=100), st.lists(st.binary(min_size=32, max_size=32), max_size=70),
    st.lists(st.binary(max_size=40), max_size=5),
    st.tuples(st.binary(max_size=20), st.binary(max_size=20), st.integers(-2**40, 2**40),
              st.integers(-2**40, 2**40), st.integers(-2**40, 2**40), st.integers(-2**300, 2**300)),
)


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(position=st.integers(0, 7), value=junk, subs=st.lists(junk, max_size=4))
def test_fuzz_validate_batch_arguments(position: int, value: Any, subs: list[Any]) -> None:
    args: list[Any] = [GOOD_JOB[k] for k in JOB_ORDER] + [[GOOD_SUB, *subs]]
    args[position] = value
    try:
        out = kzhash.validate_batch(*args)
    except (TypeError, ValueError):
        return
    assert all(len(r) == 3 and len(r[0]) == 32 for r in out)


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(data=st.one_of(junk, st.binary(max_size=400)), branch=junk)
def test_fuzz_hash_functions(data: Any, branch: Any) -> None:
    for fn in (kzhash.dsha256, kzhash.sha256, kzhash.hash_headers):
        try:
            fn(data)
        except (TypeError, ValueError):
            pass
    try:
        kzhash.merkle_root(data, branch)
    except (TypeError, ValueError):
        pass
