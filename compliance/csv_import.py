"""Reading and checking registry CSV files, before anything touches the database.

Pure: a file's text plus a snapshot of what the registry already holds in, typed rows plus one
`RowProblem` per bad cell out. The registry applies a file only when the list of problems is empty,
so an import is all-or-nothing. Problem texts never contain IIN/BINs or names (the report goes to
a terminal and to logs); they name the row (its line in the file, the header being line 1) and
the column.
"""
from __future__ import annotations

import csv
import io
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Callable, Iterator

from .iin import IinBinError, parse_iin_bin
from .standing import LICENCE_YEARS, LicenceStatus, default_expiry

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DATACENTRE_COLUMNS = ("id", "name", "region", "address", "owner_iin_bin", "cidrs")
LICENCE_COLUMNS = ("login", "iin_bin", "name", "licence_no", "subtype", "issued", "expires", "status",
                   "suspended_until", "datacentre", "payout_address")
RENEWAL_COLUMNS = ("login", "licence_no", "issued", "expires", "reason")
MAX_REASON = 512                     # licence_events.reason
DEFAULT_RENEWAL_REASON = "renewal"
# No dot in a login: worker names are <login>.<worker>.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TWELVE_DIGITS = re.compile(r"\d{12}")
SUBTYPES = ("I", "II")
MAX_TEXT = 256


@dataclass(frozen=True, slots=True, order=True)
class RowProblem:
    row: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.column}: {self.reason}"


@dataclass(frozen=True, slots=True)
class DatacentreRow:
    row: int
    id: str
    name: str
    region: str
    address: str
    owner_iin_bin: str
    networks: tuple[IpNetwork, ...]


@dataclass(frozen=True, slots=True)
class LicenceRow:
    row: int
    login: str
    iin_bin: str
    name: str
    licence_no: str
    subtype: str
    issued: date
    expires: date
    status: LicenceStatus
    suspended_until: date | None
    datacentre: str
    payout_address: str


@dataclass(frozen=True, slots=True)
class RenewalRow:
    """A renewal of the licence of an existing login: the new licence's number and dates.
    `row` is the line of a renewals file (0: the command line)."""
    row: int
    login: str
    licence_no: str
    issued: date
    expires: date
    reason: str


@dataclass(slots=True)
class RegistrySnapshot:
    """What the database holds already, for the cross-row checks."""
    datacentre_owners: dict[str, bytes] = field(default_factory=dict)     # id -> owner IIN/BIN index
    networks: list[tuple[IpNetwork, str]] = field(default_factory=list)   # (range, data centre id)
    logins: set[str] = field(default_factory=set)
    licence_nos: set[str] = field(default_factory=set)


class _Problems(list[RowProblem]):
    def add(self, row: int, column: str, reason: str) -> None:
        self.append(RowProblem(row, column, reason))


def _records(text: str, columns: tuple[str, ...], problems: _Problems) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    header = [h.strip() for h in next(reader, [])]
    if tuple(header) != columns:
        problems.add(1, "header", f"expected {','.join(columns)}")
        return
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue                     # blank lines are not rows
        row = reader.line_num
        if len(cells) != len(columns):
            problems.add(row, "row", f"has {len(cells)} fields, expected {len(columns)}")
            continue
        yield row, {k: v.strip() for k, v in zip(columns, cells)}


def _required(rec: dict[str, str], column: str, row: int, problems: _Problems) -> str:
    value = rec[column]
    if not value:
        problems.add(row, column, "is empty")
    elif len(value) > MAX_TEXT:
        problems.add(row, column, f"longer than {MAX_TEXT} characters")
    return value


def _identifier(rec: dict[str, str], column: str, row: int, problems: _Problems) -> str:
    value = rec[column]
    if not NAME_PATTERN.fullmatch(value):
        problems.add(row, column, "must be 1-64 letters, digits, '_' or '-'")
    return value


def _iin_bin(rec: dict[str, str], column: str, row: int, problems: _Problems) -> str:
    try:
        return parse_iin_bin(rec[column]).value
    except IinBinError as exc:
        problems.add(row, column, str(exc))
        return ""


def _date(rec: dict[str, str], column: str, row: int, problems: _Problems) -> date | None:
    value = rec[column]
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        problems.add(row, column, "date error: expected YYYY-MM-DD")
        return None


def _networks(value: str, row: int, problems: _Problems) -> tuple[IpNetwork, ...]:
    out: list[IpNetwork] = []
    for text in value.split():
        try:
            out.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            problems.add(row, "cidrs", f"{text} is not a network ({exc})")
    if not value.split():
        problems.add(row, "cidrs", "is empty: a data centre needs at least one IP range")
    return tuple(out)


def find_overlaps(ranges: list[tuple[IpNetwork, str]]) -> list[tuple[int, int]]:
    """Index pairs (i, j), i < j in `ranges`, of overlapping networks; a sweep over sorted starts, so
    a large registry costs n log n, not n^2."""
    order = sorted(range(len(ranges)), key=lambda i: (ranges[i][0].version, int(ranges[i][0].network_address)))
    pairs: list[tuple[int, int]] = []
    widest: int | None = None            # the range reaching furthest so far, in this IP version
    for i in order:
        net = ranges[i][0]
        if widest is not None and ranges[widest][0].version == net.version \
                and int(net.network_address) <= int(ranges[widest][0].broadcast_address):
            pairs.append((min(i, widest), max(i, widest)))
        if widest is None or ranges[widest][0].version != net.version \
                or int(net.broadcast_address) > int(ranges[widest][0].broadcast_address):
            widest = i
    return pairs


def check_datacentres(text: str, snapshot: RegistrySnapshot) -> tuple[list[DatacentreRow], list[RowProblem]]:
    problems = _Problems()
    rows: list[DatacentreRow] = []
    first_row: dict[str, int] = {}
    for row, rec in _records(text, DATACENTRE_COLUMNS, problems):
        dc_id = _identifier(rec, "id", row, problems)
        if dc_id in first_row:
            problems.add(row, "id", f"duplicate data centre id (also row {first_row[dc_id]})")
        elif dc_id in snapshot.datacentre_owners:
            problems.add(row, "id", "duplicate data centre id: already registered")
        first_row.setdefault(dc_id, row)
        name, region, address = (_required(rec, c, row, problems) for c in ("name", "region", "address"))
        owner = _iin_bin(rec, "owner_iin_bin", row, problems)
        rows.append(DatacentreRow(row, dc_id, name, region, address, owner,
                                  _networks(rec["cidrs"], row, problems)))
    # Ranges already registered come first, so an overlap is reported on the file's row.
    ranges: list[tuple[IpNetwork, str]] = list(snapshot.networks)
    where: list[int | None] = [None] * len(ranges)
    for dc in rows:
        for net in dc.networks:
            ranges.append((net, dc.id))
            where.append(dc.row)
    for i, j in find_overlaps(ranges):
        row_j, row_i = where[j], where[i]
        assert row_j is not None          # two registered ranges never overlap
        other = f"registered range {ranges[i][0]} of data centre {ranges[i][1]}" if row_i is None \
            else f"{ranges[i][0]} of data centre {ranges[i][1]} (row {row_i})"
        problems.add(row_j, "cidrs", f"overlapping CIDRs: {ranges[j][0]} overlaps {other}")
    return rows, sorted(problems)


def _licence_dates(rec: dict[str, str], row: int, problems: _Problems,
                   status: LicenceStatus | None) -> tuple[date | None, date | None, date | None]:
    issued = _date(rec, "issued", row, problems)
    if issued is None and not rec["issued"]:
        problems.add(row, "issued", "date error: the issue date is required")
    expires = _date(rec, "expires", row, problems)
    until = _date(rec, "suspended_until", row, problems)
    if issued is not None:
        longest = default_expiry(issued)
        if expires is None and not rec["expires"]:
            expires = longest
        elif expires is not None and expires <= issued:
            problems.add(row, "expires", "date error: expires must be after issued")
        elif expires is not None and expires > longest:
            problems.add(row, "expires", f"date error: a licence lasts at most {LICENCE_YEARS} years after issued")
        if until is not None and until <= issued:
            problems.add(row, "suspended_until", "date error: suspended_until must be after issued")
    if status is LicenceStatus.SUSPENDED and until is None and not rec["suspended_until"]:
        problems.add(row, "suspended_until", "date error: a suspended licence needs suspended_until")
    elif status is not None and status is not LicenceStatus.SUSPENDED and rec["suspended_until"]:
        problems.add(row, "suspended_until", f"date error: given for status {status.value}")
    return issued, expires, until


def check_licences(text: str, snapshot: RegistrySnapshot, index: Callable[[str], bytes],
                   address_check: Callable[[str], None] | None = None) -> tuple[list[LicenceRow], list[RowProblem]]:
    """`index` is the PII box's keyed hash (for the subtype II check); `address_check` raises
    ValueError for a payout address not valid on the pool's network."""
    problems = _Problems()
    rows: list[LicenceRow] = []
    seen: dict[tuple[str, str], int] = {}
    for row, rec in _records(text, LICENCE_COLUMNS, problems):
        login = _identifier(rec, "login", row, problems)
        if _TWELVE_DIGITS.fullmatch(login):
            problems.add(row, "login", "must not be 12 digits: logins appear in logs, IIN/BINs must not")
        licence_no = _required(rec, "licence_no", row, problems)
        for column, value, known in (("login", login, snapshot.logins),
                                     ("licence_no", licence_no, snapshot.licence_nos)):
            if (column, value) in seen:
                problems.add(row, column, f"duplicate {column} (also row {seen[column, value]})")
            elif value in known:
                problems.add(row, column, f"duplicate {column}: already registered")
            seen.setdefault((column, value), row)
        iin_bin = _iin_bin(rec, "iin_bin", row, problems)
        name = _required(rec, "name", row, problems)
        subtype = rec["subtype"]
        if subtype not in SUBTYPES:
            problems.add(row, "subtype", "must be I or II")
        try:
            status: LicenceStatus | None = LicenceStatus(rec["status"] or "active")
        except ValueError:
            status = None
            problems.add(row, "status", f"must be one of {', '.join(s.value for s in LicenceStatus)}")
        issued, expires, until = _licence_dates(rec, row, problems, status)
        dc = rec["datacentre"]
        if dc not in snapshot.datacentre_owners:
            problems.add(row, "datacentre", "unknown data centre")
        elif subtype == "II" and iin_bin and snapshot.datacentre_owners[dc] == index(iin_bin):
            problems.add(row, "datacentre", "subtype II miner points at its own data centre "
                                            "(the data centre's owner IIN/BIN is the miner's)")
        payout = _required(rec, "payout_address", row, problems)
        if payout and address_check is not None:
            try:
                address_check(payout)
            except ValueError as exc:
                problems.add(row, "payout_address", f"not a valid address: {exc}")
        if issued is not None and expires is not None and status is not None:
            rows.append(LicenceRow(row, login, iin_bin, name, licence_no, subtype, issued, expires,
                                   status, until, dc, payout))
    return rows, sorted(problems)


def renewal_problems(login: str, licence_no: str, issued: date, expires: date,
                     reason: str) -> list[tuple[str, str, str]]:
    """The checks of a renewal that need no registry: (column, error name, text) per problem.
    Dates are Kazakhstan calendar dates; `expires` is exclusive (the first day without)."""
    out: list[tuple[str, str, str]] = []
    if not NAME_PATTERN.fullmatch(login):
        out.append(("login", "bad_login", "must be 1-64 letters, digits, '_' or '-'"))
    if not licence_no:
        out.append(("licence_no", "licence_no_required", "is empty"))
    elif len(licence_no) > 64:
        out.append(("licence_no", "licence_no_too_long", "longer than 64 characters"))
    if expires <= issued:
        out.append(("expires", "expires_not_after_issued",
                    f"expires {expires.isoformat()} must be after issued {issued.isoformat()}"))
    elif expires > default_expiry(issued):
        out.append(("expires", "licence_too_long",
                    f"a licence lasts at most {LICENCE_YEARS} years after issued (until {default_expiry(issued)})"))
    if not reason.strip():
        out.append(("reason", "reason_required", "a reason is required (recorded in the licence history)"))
    elif len(reason) > MAX_REASON:
        out.append(("reason", "reason_too_long", f"longer than {MAX_REASON} characters"))
    return out


def check_renewals(text: str) -> tuple[list[RenewalRow], list[RowProblem]]:
    """A renewals file (login,licence_no,issued,expires,reason; an empty reason is "renewal"): the
    rows that pass the checks needing no registry, and one problem per bad cell ("<error name>: text")."""
    problems = _Problems()
    rows: list[RenewalRow] = []
    first_row: dict[tuple[str, str], int] = {}
    for row, rec in _records(text, RENEWAL_COLUMNS, problems):
        before = len(problems)
        issued, expires = (_date(rec, c, row, problems) for c in ("issued", "expires"))
        for column, value in (("issued", issued), ("expires", expires)):
            if value is None and not rec[column]:
                problems.add(row, column, "date_required: YYYY-MM-DD, a Kazakhstan calendar date")
        for column in ("login", "licence_no"):
            key = (column, rec[column])
            if key in first_row:
                problems.add(row, column, f"duplicate_{column}: also row {first_row[key]}")
            first_row.setdefault(key, row)
        if issued is None or expires is None:
            continue
        reason = rec["reason"] or DEFAULT_RENEWAL_REASON
        for column, name, text_ in renewal_problems(rec["login"], rec["licence_no"], issued, expires, reason):
            problems.add(row, column, f"{name}: {text_}")
        if len(problems) == before:
            rows.append(RenewalRow(row, rec["login"], rec["licence_no"], issued, expires, reason))
    if not rows and not problems:
        problems.add(2, "row", "no rows")
    return rows, sorted(problems)
