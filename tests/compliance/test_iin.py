"""IIN/BIN: the published examples (tests/vectors/iin_bin.json), hand-built structural failures, and
numbers generated from the rules, checked against an independent transcription of the check-digit rule."""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compliance.iin import (BIN_ATTRIBUTES, BIN_TYPES, IdKind, IinBinError, check_digit, is_valid_iin_bin,
                            make_bin, make_iin, mask_iin_bin, parse_iin_bin, redact_iin_bins)

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "iin_bin.json").read_text())


def reference_valid_check_digit(number: str) -> bool:
    """KZ-REGULATION.md's rule, written out separately from compliance/iin.py."""
    d = [int(c) for c in number]
    c = sum(d[i] * (i + 1) for i in range(11)) % 11
    if c == 10:
        c = sum(d[i] * ((i + 2) % 11 + 1) for i in range(11)) % 11   # weights 3..11, 1, 2
        if c == 10:
            return False
    return c == d[11]


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["value"].strip())
def test_valid_vectors(case: dict) -> None:
    parsed = parse_iin_bin(case["value"])
    assert parsed.kind == IdKind(case["kind"])
    assert parsed.value == case["value"].strip()
    assert reference_valid_check_digit(parsed.value)


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["value"] or "empty")
def test_invalid_vectors(case: dict) -> None:
    with pytest.raises(IinBinError) as err:
        parse_iin_bin(case["value"])
    assert str(err.value).startswith(case["reason"])
    assert not is_valid_iin_bin(case["value"])
    if case["value"]:
        assert case["value"] not in str(err.value), "error texts must not repeat the number"


def test_second_weights_are_3_to_11_then_1_2() -> None:
    # A prefix whose first pass gives 10 exercises the second pass.
    prefix = next(f"9401400{n:04d}" for n in range(10_000)
                  if sum(int(c) * (i + 1) for i, c in enumerate(f"9401400{n:04d}")) % 11 == 10)
    expected = sum(int(c) * w for c, w in zip(prefix, (3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2))) % 11
    assert check_digit(prefix) == (None if expected == 10 else expected)


# ---- numbers generated from the rules ---------------------------------------------------------
births = st.dates(min_value=date(1800, 1, 1), max_value=date(2099, 12, 31))
sexes = st.sampled_from(["M", "F"])
serials4 = st.integers(0, 9999)


@settings(max_examples=400, deadline=None)
@given(births, sexes, serials4)
def test_generated_iins_validate_as_iins(birth: date, sex: str, serial: int) -> None:
    century = {1800: 1, 1900: 3, 2000: 5}[birth.year // 100 * 100] + (sex == "F")
    prefix = f"{birth:%y%m%d}{century}{serial:04d}"
    iin = make_iin(birth, sex, serial)
    if iin is None:          # these 11 digits admit no check digit: all ten endings are invalid
        assert not any(reference_valid_check_digit(prefix + str(c)) for c in range(10))
        return
    assert iin[:11] == prefix
    assert parse_iin_bin(iin).kind is IdKind.IIN and reference_valid_check_digit(iin)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 99), st.integers(1, 12), st.sampled_from(sorted(BIN_TYPES)),
       st.sampled_from(sorted(BIN_ATTRIBUTES)), st.integers(0, 99999))
def test_generated_bins_validate_as_bins(year: int, month: int, kind: int, attribute: int, serial: int) -> None:
    number = make_bin(year, month, kind, attribute, serial)
    if number is None:
        return
    assert parse_iin_bin(number).kind is IdKind.BIN and reference_valid_check_digit(number)
    assert number[:6] == f"{year:02d}{month:02d}{kind}{attribute}"


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 99), st.integers(1, 12), st.integers(0, 99999), st.integers(1, 9))
def test_any_other_check_digit_is_refused(year: int, month: int, serial: int, shift: int) -> None:
    number = make_bin(year, month, 4, 0, serial)
    if number is None:
        return
    wrong = number[:11] + str((int(number[11]) + shift) % 10)
    with pytest.raises(IinBinError, match="bad check digit"):
        parse_iin_bin(wrong)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789", min_size=12, max_size=12))
def test_any_12_digits_judged_like_the_reference(number: str) -> None:
    # Structure aside, acceptance never disagrees with the reference check digit.
    if is_valid_iin_bin(number):
        assert reference_valid_check_digit(number)
    elif reference_valid_check_digit(number):
        with pytest.raises(IinBinError, match="bad structure"):
            parse_iin_bin(number)


def test_generators_refuse_values_outside_the_rules() -> None:
    with pytest.raises(ValueError):
        make_iin(date(2100, 1, 1), "M", 1)
    with pytest.raises(ValueError):
        make_bin(24, 13, 4, 0, 1)
    with pytest.raises(ValueError):
        make_bin(24, 1, 7, 0, 1)


def test_masking_keeps_only_the_last_four_digits() -> None:
    assert mask_iin_bin("791028302728") == "********2728"
    assert redact_iin_bins("791028302728.rig1") == "********2728.rig1"
    assert redact_iin_bins("rig-791028302729") == "rig-791028302729"     # not a valid IIN: left alone
    assert redact_iin_bins("1791028302728") == "1791028302728"           # 13 digits: not an IIN
