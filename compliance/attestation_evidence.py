"""The evidence that a pool node sits in Kazakhstan, one collector per source (KZ-REGULATION.md,
"The pool"). None of them is a legal test by itself; the verdict (compliance/attestation.py)
keeps them all.

- GeoIP: the country of an address in a MaxMind-format database (GeoLite2-Country, DB-IP lite;
  any MMDB with `country.iso_code`, falling back to `registered_country.iso_code`).
- RIR delegations: whether an address lies in a range delegated to KZ in an RIR's delegated
  statistics file (`registry|cc|type|start|value|date|status`; for ipv4 `value` is a host count,
  which need not be a power of two, for ipv6 a prefix length).
- Data centre: whether an address lies in a registered range of the node's data centre.
- Clock: the host's UTC offset (all of Kazakhstan is UTC+5 since 1 March 2024).
Every collector returns an `Evidence` and never raises for a missing or broken file: that is an
"unknown", not a crash.
"""
from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import maxminddb

PASS = "pass"
FAIL = "fail"
UNKNOWN = "unknown"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Evidence:
    kind: str          # geoip | rir | datacentre | utc_offset | addresses
    subject: str       # the address judged, or "host"
    result: str        # pass | fail | unknown
    found: str         # what the source said: a country code, a range, an offset; "" when nothing
    detail: str        # why, for the operator and the auditor

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def is_public(addr: IpAddress) -> bool:
    return addr.is_global


class CountryDatabase:
    """An MMDB country database, opened per check (operators replace the file in place weekly)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def countries(self, addresses: Iterable[IpAddress], expected: str) -> list[Evidence]:
        addresses = list(addresses)
        if not self.path:
            return [Evidence("geoip", str(a), UNKNOWN, "", "no GeoIP database configured (location.mmdb_path)")
                    for a in addresses]
        try:
            reader = maxminddb.open_database(self.path)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            why = f"GeoIP database {self.path} unreadable: {type(exc).__name__}"
            return [Evidence("geoip", str(a), UNKNOWN, "", why) for a in addresses]
        with reader:
            return [self._judge(reader, a, expected) for a in addresses]

    def _judge(self, reader: Any, addr: IpAddress, expected: str) -> Evidence:
        try:
            record = reader.get(str(addr))
        except (ValueError, maxminddb.InvalidDatabaseError) as exc:   # e.g. IPv6 in an IPv4-only database
            return Evidence("geoip", str(addr), UNKNOWN, "", f"lookup failed: {exc}")
        code = country_code(record)
        if not code:
            return Evidence("geoip", str(addr), UNKNOWN, "", "address not in the GeoIP database")
        result = PASS if code == expected else FAIL
        return Evidence("geoip", str(addr), result, code, f"GeoIP country {code}")


def country_code(record: Any) -> str:
    """`country.iso_code`, else `registered_country.iso_code` (anycast and satellite ranges often
    carry only the latter), else ""."""
    if not isinstance(record, dict):
        return ""
    for key in ("country", "registered_country"):
        section = record.get(key)
        if isinstance(section, dict) and isinstance(section.get("iso_code"), str):
            return section["iso_code"].upper()
    return ""


@dataclass(frozen=True, slots=True)
class DelegatedRanges:
    """The address ranges one country holds in a delegated-stats file, as sorted integer spans."""
    country: str
    v4: tuple[tuple[int, int], ...]     # (first, last) inclusive
    v6: tuple[tuple[int, int], ...]

    def find(self, addr: IpAddress) -> tuple[int, int] | None:
        spans = self.v4 if addr.version == 4 else self.v6
        value = int(addr)
        i = bisect.bisect_right(spans, (value, 1 << 128)) - 1
        if i >= 0 and spans[i][0] <= value <= spans[i][1]:
            return spans[i]
        return None


DELEGATED_STATUSES = {"allocated", "assigned"}


def parse_delegated(text: str, country: str) -> DelegatedRanges:
    """Keep the ipv4/ipv6 records of `country` with status allocated or assigned; skip comments,
    the version line, summary lines (`*` in the cc field) and anything malformed."""
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split("|")
        if len(parts) < 7 or parts[1].upper() != country or parts[2] not in ("ipv4", "ipv6"):
            continue
        if parts[6].strip().lower() not in DELEGATED_STATUSES:
            continue
        try:
            start = ipaddress.ip_address(parts[3])
            value = int(parts[4])
        except ValueError:
            continue
        if parts[2] == "ipv4" and start.version == 4 and value > 0:
            v4.append((int(start), int(start) + value - 1))          # a host count, not a prefix
        elif parts[2] == "ipv6" and start.version == 6 and 0 <= value <= 128:
            first = int(start)
            v6.append((first, first + (1 << (128 - value)) - 1))
    return DelegatedRanges(country, tuple(sorted(v4)), tuple(sorted(v6)))


def delegation_evidence(path: str, addresses: Iterable[IpAddress], expected: str) -> list[Evidence]:
    addresses = list(addresses)
    if not path:
        return [Evidence("rir", str(a), UNKNOWN, "", "no delegated-stats file configured (location.delegated_stats_path)")
                for a in addresses]
    try:
        ranges = parse_delegated(Path(path).read_text(encoding="ascii", errors="replace"), expected)
    except OSError as exc:
        why = f"delegated-stats file {path} unreadable: {exc.strerror or type(exc).__name__}"
        return [Evidence("rir", str(a), UNKNOWN, "", why) for a in addresses]
    if not ranges.v4 and not ranges.v6:
        return [Evidence("rir", str(a), UNKNOWN, "", f"{path} lists no {expected} ranges (wrong or truncated file?)")
                for a in addresses]
    out = []
    for addr in addresses:
        span = ranges.find(addr)
        if span is None:
            out.append(Evidence("rir", str(addr), FAIL, "", f"not in any {expected} delegation"))
        else:
            first, last = (ipaddress.ip_address(v) for v in span)
            out.append(Evidence("rir", str(addr), PASS, f"{first}-{last}", f"delegated to {expected}"))
    return out


def datacentre_evidence(datacentre_id: str, networks: list[IpNetwork] | None,
                        addresses: Iterable[IpAddress]) -> list[Evidence]:
    """`networks` is None when the data centre is not in the registry."""
    out = []
    for addr in addresses:
        if not datacentre_id:
            out.append(Evidence("datacentre", str(addr), UNKNOWN, "", "no data centre configured (location.datacentre)"))
        elif networks is None:
            out.append(Evidence("datacentre", str(addr), UNKNOWN, "", f"data centre {datacentre_id} not in the registry"))
        else:
            inside = [n for n in networks if n.version == addr.version and addr in n]
            if inside:
                out.append(Evidence("datacentre", str(addr), PASS, str(inside[0]), f"in a range of {datacentre_id}"))
            else:
                out.append(Evidence("datacentre", str(addr), FAIL, "", f"outside every range of {datacentre_id}"))
    return out


def host_utc_offset() -> timedelta:
    """The offset of this host's local zone now (TZ or /etc/localtime)."""
    offset = datetime.now().astimezone().utcoffset()
    return offset if offset is not None else timedelta(0)


def format_offset(offset: timedelta) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def clock_evidence(offset: timedelta, expected: timedelta) -> Evidence:
    found = format_offset(offset)
    if offset == expected:
        return Evidence("utc_offset", "host", PASS, found, "host clock zone is Kazakhstan time")
    return Evidence("utc_offset", "host", FAIL, found,
                    f"host clock zone is not {format_offset(expected)} (set TZ=Asia/Almaty, tzdata 2024a or later)")
