"""CSV imports on SQLite and PostgreSQL: a good file lands whole, a file with every kind of bad row
is reported row by row (row, column, reason) and changes nothing, a dry run writes nothing."""
from __future__ import annotations

import ipaddress
import json
from datetime import date

import pytest

from compliance.csv_import import find_overlaps
from compliance.registry import LicenceRegistry
from pool.address import address_to_script
from pool.db import Database

from registry_fixtures import (ALICE_IIN, BOLAT_BIN, DANA_IIN, DATACENTRES, DC_HEADER,  # noqa: F401
                               EVERY_PERSONAL_VALUE, GOOD_LICENCES, OWNER_ALA, OWNER_EKI, clock, licence_line,
                               licences_csv, registry, registry_db, registry_dump)


def regtest_address(address: str) -> None:
    address_to_script(address, "regtest")


async def seeded(registry: LicenceRegistry) -> None:
    assert (await registry.import_datacentres(DATACENTRES)).applied
    assert (await registry.import_licences(GOOD_LICENCES, address_check=regtest_address)).applied


async def test_good_files_import_whole(registry: LicenceRegistry) -> None:
    await seeded(registry)
    dcs = await registry.list_datacentres()
    assert [(d[0], d[3]) for d in dcs] == [("dc-ala", ["192.0.2.0/24", "127.0.0.1/32"]),
                                           ("dc-eki", ["10.10.0.0/16", "2001:db8:10::/48"])]
    views = {v.dates.login: v for v in await registry.list_licences(reveal=True)}
    assert sorted(views) == ["alice", "bolat", "caspian"]
    alice = views["alice"]
    assert (alice.iin_bin, alice.name, alice.subtype) == (ALICE_IIN, "Alice Ivanova IE", "II")
    assert alice.dates.expires == date(2028, 1, 10)          # issue + 3 years when not given
    assert views["caspian"].effective_status == "suspended"
    assert views["caspian"].dates.suspended_until == date(2026, 8, 1)
    masked = {v.dates.login: v for v in await registry.list_licences()}
    assert masked["alice"].iin_bin == "********2728" and masked["alice"].name == "A***"
    # The keyed-hash index finds a miner without decrypting the table.
    assert await registry.logins_for_iin_bin(BOLAT_BIN) == ["bolat"]
    assert await registry.logins_for_iin_bin(DANA_IIN) == []
    shown = await registry.show("bolat")
    assert [e[1] for e in shown.events] == ["imported"]


BAD_LICENCES = licences_csv(
    licence_line("dana", "949940000385", "Dana Seitova IE", "KZ-DM-0100"),                      # row 2
    licence_line("erlan", "791328302729", "Erlan IE", "KZ-DM-0101"),                            # row 3
    licence_line("farida", DANA_IIN, "Farida IE", "KZ-DM-0102", datacentre="dc-nowhere"),     # row 4
    licence_line("eki-own", OWNER_EKI, "Ekibastuz Owner", "KZ-DM-0103", subtype="II",         # row 5
                 datacentre="dc-eki"),
    licence_line("alice", DANA_IIN, "Dana Seitova IE", "KZ-DM-0104"),                         # row 6
    licence_line("gani", DANA_IIN, "Gani IE", "KZ-DM-0001"),                                  # row 7
    licence_line("hanna", DANA_IIN, "Hanna IE", "KZ-DM-0105"),                                # row 8
    licence_line("hanna", DANA_IIN, "Hanna IE", "KZ-DM-0105"),                                # row 9
    licence_line("ivan", DANA_IIN, "Ivan IE", "KZ-DM-0106", issued="2025-13-01"),             # row 10
    licence_line("jan", DANA_IIN, "Jan IE", "KZ-DM-0107", expires="2024-12-31"),              # row 11
    licence_line("kair", DANA_IIN, "Kair IE", "KZ-DM-0108", expires="2028-06-01"),            # row 12
    licence_line("lena", DANA_IIN, "Lena IE", "KZ-DM-0109", status="suspended"),              # row 13
    licence_line("marat", DANA_IIN, "Marat IE", "KZ-DM-0110", suspended_until="2026-09-01"),  # row 14
    licence_line("nur", DANA_IIN, "Nur IE", "KZ-DM-0111", subtype="III", status="paused"),    # row 15
    licence_line("oleg", DANA_IIN, "Oleg IE", "KZ-DM-0112", payout="bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
    licence_line("pavel.rig", DANA_IIN, "", "KZ-DM-0113"),                                    # row 17
    "quentin,1,2,3",                                                                          # row 18
    licence_line("791028302728", ALICE_IIN, "Alice again", "KZ-DM-0114"),                     # row 19
)

EXPECTED_LICENCE_PROBLEMS = [
    (2, "iin_bin", "bad check digit"),
    (3, "iin_bin", "bad structure: IIN birth month 13"),
    (4, "datacentre", "unknown data centre"),
    (5, "datacentre", "subtype II miner points at its own data centre"),
    (6, "login", "duplicate login: already registered"),
    (7, "licence_no", "duplicate licence_no: already registered"),
    (9, "licence_no", "duplicate licence_no (also row 8)"),
    (9, "login", "duplicate login (also row 8)"),
    (10, "issued", "date error: expected YYYY-MM-DD"),
    (11, "expires", "date error: expires must be after issued"),
    (12, "expires", "date error: a licence lasts at most 3 years"),
    (13, "suspended_until", "date error: a suspended licence needs suspended_until"),
    (14, "suspended_until", "date error: given for status active"),
    (15, "status", "must be one of active, suspended, revoked, expired"),
    (15, "subtype", "must be I or II"),
    (16, "payout_address", "not a valid address"),
    (17, "login", "must be 1-64 letters, digits, '_' or '-'"),
    (17, "name", "is empty"),
    (18, "row", "has 4 fields, expected 11"),
    (19, "login", "must not be 12 digits"),
]


def assert_problems(problems: list, expected: list[tuple[int, str, str]]) -> None:
    got = [(p.row, p.column, p.reason) for p in problems]
    assert len(got) == len(expected), "\n".join(map(str, problems))
    for (row, column, reason), (e_row, e_column, e_reason) in zip(got, expected):
        assert (row, column) == (e_row, e_column) and reason.startswith(e_reason), (row, column, reason)


async def test_every_kind_of_bad_licence_row_is_reported_and_nothing_changes(
        registry: LicenceRegistry, registry_db: Database) -> None:
    await seeded(registry)
    before = await registry_dump(registry_db)
    report = await registry.import_licences(BAD_LICENCES, address_check=regtest_address)
    assert not report.applied and not report.ok
    assert_problems(report.problems, EXPECTED_LICENCE_PROBLEMS)
    text = "\n".join(report.lines())
    assert len(report.lines()) == 17                       # one line per bad row: rows 2-19 but 8
    assert "row 2: iin_bin: bad check digit" in text
    assert "row 9: licence_no: duplicate licence_no (also row 8); login: duplicate login (also row 8)" in text
    for value in ("949940000385", DANA_IIN, OWNER_EKI, ALICE_IIN, "Dana Seitova"):
        assert value not in text, "the report must not show personal data"
    assert await registry_dump(registry_db) == before


BAD_DATACENTRES = "\n".join([
    DC_HEADER,
    f"dc-ast,Astana DC,Astana,Astana 1,{OWNER_ALA},10.10.5.0/24",                       # 2: inside dc-eki
    "dc-kar,Karaganda DC,Karaganda,Karaganda 2,949940000385,198.51.100.0/24",           # 3: check digit
    f"dc-shy,Shymkent DC,Turkistan,Shymkent 3,{OWNER_ALA},203.0.113.0/25 203.0.113.64/26",  # 4: own overlap
    f"dc-tar,Taraz DC,Zhambyl,Taraz 4,{OWNER_ALA},198.18.0.0/15",                       # 5
    f"dc-tur,Turkestan DC,Turkistan,Turkestan 5,{OWNER_ALA},198.19.0.0/16",             # 6: inside row 5
    f"dc-eki,Ekibastuz again,Pavlodar,Ekibastuz 6,{OWNER_EKI},100.64.0.0/24",           # 7: duplicate id
    f"dc-akt,Aktau DC,Mangystau,Aktau 7,{OWNER_ALA},100.64.1.1/24 not-a-range",         # 8: host bits, junk
    f"dc-atr,Atyrau DC,Atyrau,,{OWNER_ALA},",                                           # 9: empty fields
    f"dc-v6,IPv6 DC,Almaty,Almaty 10,{OWNER_ALA},2001:db8:10:ff::/64",                  # 10: inside dc-eki v6
]) + "\n"

EXPECTED_DC_PROBLEMS = [
    (2, "cidrs", "overlapping CIDRs: 10.10.5.0/24 overlaps registered range 10.10.0.0/16 of data centre dc-eki"),
    (3, "owner_iin_bin", "bad check digit"),
    (4, "cidrs", "overlapping CIDRs: 203.0.113.64/26 overlaps 203.0.113.0/25 of data centre dc-shy (row 4)"),
    (6, "cidrs", "overlapping CIDRs: 198.19.0.0/16 overlaps 198.18.0.0/15 of data centre dc-tar (row 5)"),
    (7, "id", "duplicate data centre id: already registered"),
    (8, "cidrs", "100.64.1.1/24 is not a network"),
    (8, "cidrs", "not-a-range is not a network"),
    (9, "address", "is empty"),
    (9, "cidrs", "is empty"),
    (10, "cidrs", "overlapping CIDRs: 2001:db8:10:ff::/64 overlaps registered range 2001:db8:10::/48"),
]


async def test_every_kind_of_bad_datacentre_row_is_reported_and_nothing_changes(
        registry: LicenceRegistry, registry_db: Database) -> None:
    await seeded(registry)
    before = await registry_dump(registry_db)
    report = await registry.import_datacentres(BAD_DATACENTRES)
    assert not report.applied
    assert_problems(report.problems, EXPECTED_DC_PROBLEMS)
    assert await registry_dump(registry_db) == before


async def test_dry_run_checks_and_writes_nothing(registry: LicenceRegistry, registry_db: Database) -> None:
    before = await registry_dump(registry_db)
    report = await registry.import_datacentres(DATACENTRES, dry_run=True)
    assert report.ok and not report.applied and report.rows == 2
    assert await registry_dump(registry_db) == before
    # Without the data centres, a dry run of the licences reports them unknown.
    report = await registry.import_licences(GOOD_LICENCES, dry_run=True)
    assert {p.reason for p in report.problems} == {"unknown data centre"}


async def test_header_must_match(registry: LicenceRegistry) -> None:
    report = await registry.import_licences("login,iin,name\nx,1,2\n")
    assert [str(p) for p in report.problems] == [
        "row 1: header: expected login,iin_bin,name,licence_no,subtype,issued,expires,status,suspended_until,"
        "datacentre,payout_address"]


async def test_duplicate_within_a_datacentre_file(registry: LicenceRegistry) -> None:
    text = DATACENTRES + DATACENTRES.split("\n", 1)[1].splitlines()[0] + "\n"
    report = await registry.import_datacentres(text)
    assert ("id", "duplicate data centre id (also row 2)") in [(p.column, p.reason) for p in report.problems]


@pytest.mark.parametrize("ranges, overlapping", [
    (["10.0.0.0/8", "11.0.0.0/8"], []),
    (["10.0.0.0/8", "10.255.255.255/32"], [(0, 1)]),
    (["10.0.0.0/24", "10.0.1.0/24", "10.0.0.0/23"], [(0, 2), (1, 2)]),
    (["::/0", "0.0.0.0/0"], []),                        # different IP versions never overlap
    (["192.0.2.0/24", "2001:db8::/32", "192.0.2.128/25"], [(0, 2)]),
])
def test_find_overlaps(ranges: list[str], overlapping: list[tuple[int, int]]) -> None:
    nets = [(ipaddress.ip_network(r), f"dc{i}") for i, r in enumerate(ranges)]
    assert sorted(find_overlaps(nets)) == overlapping


async def test_changes_go_to_the_audit_callback_without_personal_data(registry: LicenceRegistry) -> None:
    records: list[tuple[str, dict]] = []
    registry.audit = lambda kind, payload: records.append((kind, payload))
    await seeded(registry)
    await registry.suspend("alice", date(2026, 7, 15), "unpaid fee")
    await registry.revoke("alice", "second offence")
    kinds = [(kind, p["action"], p["subject"]) for kind, p in records]
    assert kinds == [("datacentre_change", "imported", "dc-eki"), ("datacentre_change", "imported", "dc-ala"),
                     ("licence_change", "imported", "KZ-DM-0001"), ("licence_change", "imported", "KZ-DM-0002"),
                     ("licence_change", "imported", "KZ-DM-0003"), ("licence_change", "suspended", "KZ-DM-0001"),
                     ("licence_change", "revoked", "KZ-DM-0001")]
    assert records[-1][1] == {"action": "revoked", "subject": "KZ-DM-0001", "login": "alice",
                                   "from": "suspended", "to": "revoked", "reason": "second offence",
                                   "suspended_until": None}
    dump = json.dumps(records)
    assert not [v for v in EVERY_PERSONAL_VALUE if v in dump]
