"""IIN / BIN: the 12-digit identifiers of Kazakhstan's individuals and legal entities.

Rules (KZ-REGULATION.md "Digital miners and their licences"):
- IIN: YYMMDD birth date, a century/sex digit 1-6, a 4-digit serial, a check digit.
- BIN: YYMM registration, a type digit (4 resident, 5 non-resident, 6 joint IE), an attribute digit
  (0 head office, 1 branch, 2 representative office, 3 peasant farm), a 5-digit serial, a check digit.
- Check digit: sum(d_i * w_i) mod 11 with weights 1..11; if that is 10, again with 3..11,1,2; a second
  10 means no number with these 11 digits is valid.

The 5th digit tells the two apart: in an IIN it is the first digit of the day (0-3), in a BIN the type
(4-6). Error texts never repeat the number itself: callers put them in logs and import reports.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from enum import Enum

FIRST_WEIGHTS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
SECOND_WEIGHTS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2)
# Century/sex digit of an IIN -> (century base year, sex).
IIN_CENTURY = {1: (1800, "M"), 2: (1800, "F"), 3: (1900, "M"), 4: (1900, "F"), 5: (2000, "M"), 6: (2000, "F")}
BIN_TYPES = {4: "resident", 5: "non-resident", 6: "joint individual entrepreneurship"}
BIN_ATTRIBUTES = {0: "head office", 1: "branch", 2: "representative office", 3: "peasant farm"}


class IdKind(str, Enum):
    IIN = "IIN"     # an individual (an individual entrepreneur mines under its IIN)
    BIN = "BIN"     # a legal entity


class IinBinError(ValueError):
    """Why a value is not a valid IIN/BIN; the text is safe to log (it does not contain the number)."""


@dataclass(frozen=True, slots=True)
class IinBin:
    value: str
    kind: IdKind


def check_digit(first11: str) -> int | None:
    """The check digit for 11 leading digits, or None when both weight passes give 10."""
    digits = [int(c) for c in first11]
    for weights in (FIRST_WEIGHTS, SECOND_WEIGHTS):
        c = sum(d * w for d, w in zip(digits, weights)) % 11
        if c != 10:
            return c
    return None


def _check_iin_structure(value: str) -> None:
    century_digit = int(value[6])
    if century_digit not in IIN_CENTURY:
        raise IinBinError(f"bad structure: IIN century/sex digit {century_digit} is not 1-6")
    base, _ = IIN_CENTURY[century_digit]
    year, month, day = base + int(value[0:2]), int(value[2:4]), int(value[4:6])
    if not 1 <= month <= 12:
        raise IinBinError(f"bad structure: IIN birth month {month:02d} is not 01-12")
    try:
        date(year, month, day)
    except ValueError:
        raise IinBinError(f"bad structure: IIN birth date has no day {day:02d} in month {month:02d}") from None


def _check_bin_structure(value: str) -> None:
    month, kind, attribute = int(value[2:4]), int(value[4]), int(value[5])
    if not 1 <= month <= 12:
        raise IinBinError(f"bad structure: BIN registration month {month:02d} is not 01-12")
    if kind not in BIN_TYPES:
        raise IinBinError(f"bad structure: BIN type digit {kind} is not 4, 5 or 6")
    if attribute not in BIN_ATTRIBUTES:
        raise IinBinError(f"bad structure: BIN attribute digit {attribute} is not 0-3")


def parse_iin_bin(text: str) -> IinBin:
    """The validated IIN/BIN in `text` (surrounding spaces allowed), or IinBinError saying why not."""
    value = text.strip()
    if len(value) != 12 or not value.isascii() or not value.isdigit():
        raise IinBinError("must be exactly 12 digits")
    expected = check_digit(value[:11])
    if expected is None:
        raise IinBinError("bad check digit: no valid check digit exists for the first 11 digits")
    if expected != int(value[11]):
        raise IinBinError("bad check digit")
    fifth = int(value[4])
    if fifth <= 3:
        _check_iin_structure(value)
        return IinBin(value, IdKind.IIN)
    if fifth in BIN_TYPES:
        _check_bin_structure(value)
        return IinBin(value, IdKind.BIN)
    raise IinBinError(f"bad structure: 5th digit {fifth} is neither an IIN day (0-3) nor a BIN type (4-6)")


def is_valid_iin_bin(text: str) -> bool:
    try:
        parse_iin_bin(text)
    except IinBinError:
        return False
    return True


def mask_iin_bin(value: str) -> str:
    """For screens and exports without the personal-data flag: the last 4 digits only."""
    return "*" * 8 + value[-4:] if len(value) == 12 else "*" * len(value)


def _with_check_digit(first11: str) -> str | None:
    c = check_digit(first11)
    return None if c is None else first11 + str(c)


def make_iin(birth: date, sex: str, serial: int) -> str | None:
    """An IIN built from the rules, or None if these 11 digits admit no check digit."""
    century = next((d for d, (base, s) in IIN_CENTURY.items() if s == sex and base <= birth.year < base + 100),
                   None)
    if century is None or not 0 <= serial <= 9999:
        raise ValueError("make_iin: birth year 1800-2099, sex M or F, serial 0-9999")
    return _with_check_digit(f"{birth:%y%m%d}{century}{serial:04d}")


def make_bin(year: int, month: int, kind: int, attribute: int, serial: int) -> str | None:
    """A BIN built from the rules, or None if these 11 digits admit no check digit."""
    if not (1 <= month <= 12 and kind in BIN_TYPES and attribute in BIN_ATTRIBUTES and 0 <= serial <= 99999):
        raise ValueError("make_bin: month 1-12, kind 4-6, attribute 0-3, serial 0-99999")
    return _with_check_digit(f"{year % 100:02d}{month:02d}{kind}{attribute}{serial:05d}")


_TWELVE_DIGITS = re.compile(r"(?<!\d)\d{12}(?!\d)")


def redact_iin_bins(text: str) -> str:
    """`text` with every valid IIN/BIN in it masked: for strings a miner chose (worker names) that
    go to logs or the audit log, in case someone mines under their own IIN."""
    return _TWELVE_DIGITS.sub(lambda m: mask_iin_bin(m.group()) if is_valid_iin_bin(m.group()) else m.group(), text)
