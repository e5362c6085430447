"""`licences ...` and `datacentres ...` through compliance.cli.main: exit codes, reports, masking,
and no plain IIN/BIN or name in any output or log line unless --show-personal asks for it."""
from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from compliance.cli import main
from pool.db import Database

from compliance.standing import default_expiry, kz_today, utc_now
from registry_fixtures import (ALICE_IIN, BOLAT_BIN, CASPIAN_BIN, DATACENTRES, EVERY_PERSONAL_VALUE,
                               PII_KEY_HEX, licence_line, licences_csv)

# The CLI judges by the real clock: dates relative to today keep these tests true in any year.
TODAY = kz_today(utc_now())
ISSUED = TODAY - timedelta(days=30)
SOON = TODAY + timedelta(days=30)
LICENCES = licences_csv(
    licence_line("alice", ALICE_IIN, "Alice Ivanova IE", "KZ-DM-0001", subtype="II", datacentre="dc-eki",
                 issued=ISSUED),
    licence_line("bolat", BOLAT_BIN, "Bolat Energy LLP", "KZ-DM-0002", datacentre="dc-eki", issued=ISSUED),
    licence_line("caspian", CASPIAN_BIN, "Caspian Hash JSC", "KZ-DM-0003", status="suspended",
                 suspended_until=SOON.isoformat(), issued=ISSUED),
)


class Cli:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = f"sqlite+aiosqlite:///{tmp_path}/cli.sqlite3"
        self.tmp_path = tmp_path
        self.capsys = capsys
        self.outputs: list[str] = []

    def file(self, name: str, text: str) -> str:
        path = self.tmp_path / name
        path.write_text(text)
        return str(path)

    def __call__(self, *argv: str, mode: str = "demo") -> tuple[int, str]:
        code = main([*argv, "--set", f"database.url={self.url}", "--set", f"mode={mode}"])
        captured = self.capsys.readouterr()
        self.outputs.append(captured.out + captured.err)
        return code, captured.out + captured.err


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("KZPOOL_PII_KEY", PII_KEY_HEX)
    runner = Cli(tmp_path, capsys)

    async def migrate() -> None:
        db = Database(runner.url)
        await db.upgrade()
        await db.close()
    asyncio.run(migrate())
    return runner


def import_good(cli: Cli) -> None:
    assert cli("datacentres", "import", cli.file("dc.csv", DATACENTRES)) == (0, "datacentres: 2 row(s) imported\n")
    assert cli("licences", "import", cli.file("lic.csv", LICENCES)) == (0, "licences: 3 row(s) imported\n")


def test_import_list_show_and_changes(cli: Cli, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    code, out = cli("licences", "import", cli.file("lic.csv", LICENCES), "--dry-run")
    assert code == 1 and "row 2: datacentre: unknown data centre" in out and "nothing imported" in out
    assert cli("datacentres", "import", cli.file("dc.csv", DATACENTRES), "--dry-run")[1] == \
        "datacentres: 2 row(s) would import (dry run, nothing written)\n"
    import_good(cli)
    code, out = cli("datacentres", "list")
    assert code == 0 and "dc-eki\tEkibastuz DC\tPavlodar\t10.10.0.0/16 2001:db8:10::/48" in out

    code, out = cli("licences", "list")
    assert code == 0
    assert (f"alice\tKZ-DM-0001\tII\tactive\t{ISSUED}\t{default_expiry(ISSUED)}\tdc-eki\t********2728\tA***"
            in out)
    code, out = cli("licences", "list", "--status", "suspended")
    assert [line.split("\t")[0] for line in out.splitlines()[1:]] == ["caspian"]

    assert cli("licences", "suspend", "alice", "--until", "2099-01-01", "--reason", "x")[0] == 1   # > 6 months
    code, out = cli("licences", "suspend", "bolat", "--until", "2000-01-01", "--reason", "x")
    assert code == 1 and "is not after today" in out
    code, out = cli("licences", "revoke", "alice", "--reason", "order 7 of the ministry")
    assert code == 0 and out.startswith("alice: revoked (order 7 of the ministry); its connected miners")
    code, out = cli("licences", "revoke", "alice", "--reason", "again")
    assert code == 1 and "the licence is revoked" in out
    assert cli("licences", "reinstate", "alice", "--reason", "recorded in error")[0] == 0
    assert cli("licences", "revoke", "nobody", "--reason", "x") == (1, "kzpool: unknown login 'nobody'\n")

    code, out = cli("licences", "show", "alice")
    assert code == 0 and "iin_bin          ********2728" in out
    assert "revoked -> revoked: order 7 of the ministry" in out and "reinstated -> active: recorded in error" in out

    # Nothing so far has shown personal data: not the output, not the log.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for value in EVERY_PERSONAL_VALUE:
        assert all(value not in text for text in cli.outputs), value
        assert value not in logged, value

    # Only the explicit flag shows it.
    assert ALICE_IIN in cli("licences", "show", "alice", "--show-personal")[1]
    out = cli("licences", "list", "--show-personal")[1]
    assert BOLAT_BIN in out and "Bolat Energy LLP" in out


def test_bad_file_reports_rows_and_exit_1(cli: Cli) -> None:
    import_good(cli)
    bad = licences_csv(licence_line("zed", "949940000385", "Zed IE", "KZ-DM-0001", datacentre="dc-x"))
    code, out = cli("licences", "import", cli.file("bad.csv", bad))
    assert code == 1
    assert out.splitlines()[0] == ("row 2: datacentre: unknown data centre; iin_bin: bad check digit; "
                                   "licence_no: duplicate licence_no: already registered")
    assert "1 bad row(s) of 1; nothing imported" in out
    assert "949940000385" not in out


def test_reason_is_required(cli: Cli) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["licences", "revoke", "alice"])
    assert exc.value.code == 2


def test_refusals_before_the_registry(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = cli("licences", "import", str(tmp_path / "missing.csv"))
    assert code == 1 and "missing.csv" in out
    monkeypatch.delenv("KZPOOL_PII_KEY")
    code, out = cli("licences", "list", "--set", "auth.authorizer=allowlist", "--set", 'auth.logins=["x"]',
                    "--set", 'auth.allowed_networks=["10.0.0.0/8"]', "--set", 'accreditation.number="A-1"', "--set",
                    'accreditation.issued="2026-01-01"', "--set", 'accreditation.expires="2029-01-01"',
                    "--set", 'accreditation.authority="MDDIAI"',
                    mode="production")
    assert code == 2 and "no PII key" in out
    monkeypatch.setenv("KZPOOL_PII_KEY", PII_KEY_HEX)
    cli.url = f"sqlite+aiosqlite:///{tmp_path}/empty.sqlite3"
    code, out = cli("licences", "list")
    assert code == 1 and "kzpool db upgrade" in out
    assert cli("licences", "list", "--set", "stratum.port=nonsense")[0] == 2
