"""`licences ...` and `datacentres ...` through compliance.cli.main: exit codes, reports, masking,
and no plain IIN/BIN or name in any output or log line unless --show-personal asks for it."""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from compliance.cli import main
from pool.db import Database

from compliance.standing import default_expiry, kz_today, utc_now
from registry_fixtures import (ALICE_IIN, BOLAT_BIN, CASPIAN_BIN, DANA_IIN, DATACENTRES, EVERY_PERSONAL_VALUE,
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
        try:
            code = main([*argv, "--set", f"database.url={self.url}", "--set", f"mode={mode}",
                         "--set", f'audit.key_file="{self.tmp_path}/audit.pem"'])
        except SystemExit as exc:          # argparse's usage errors
            code = int(exc.code or 0)
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


# ---- renewals and the audit log, through the command line, on both backends ---------------------

async def audit_records(url: str) -> list[tuple[str, dict]]:
    from sqlalchemy import select

    from compliance.audit_models import AuditRecord
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            rows = (await conn.execute(select(AuditRecord.kind, AuditRecord.payload).order_by(AuditRecord.seq))).all()
    finally:
        await db.close()
    return [(kind, json.loads(payload)) for kind, payload in rows]


async def verified(url: str, key_file: Path) -> bool:
    """The whole log, signed with the pool's key, checks out (kzpool audit verify's rules)."""
    from compliance.audit_keys import load_signing_key
    from compliance.audit_verify import verify_database
    db = Database(url)
    try:
        report = await verify_database(db, [load_signing_key(key_file).public], require_signed=True)
    finally:
        await db.close()
    return report.ok


class AsyncCli(Cli):
    """The CLI on a database of either backend, run in a thread (it runs its own event loop)."""

    async def run(self, *argv: str) -> tuple[int, str]:
        return await asyncio.to_thread(self, *argv)


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend_cli(request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> AsyncCli:
    from db_fixtures import fresh_database_url
    monkeypatch.setenv("KZPOOL_PII_KEY", PII_KEY_HEX)
    runner = AsyncCli(tmp_path, capsys)
    (tmp_path / "db").mkdir()
    async with fresh_database_url(request.param, tmp_path / "db") as url:
        runner.url = url
        db = Database(url)
        await db.upgrade()
        await db.close()
        return runner


EXPIRED_ISSUED = TODAY - timedelta(days=3 * 365 + 10)          # 3 years ago and some: expired by now
DANA = licence_line("dana", DANA_IIN, "Dana Seitova IE", "KZ-DM-0004", issued=EXPIRED_ISSUED)


async def test_renew_an_expired_licence_history_and_audit(backend_cli: AsyncCli) -> None:
    cli = backend_cli
    assert (await cli.run("datacentres", "import", cli.file("dc.csv", DATACENTRES)))[0] == 0
    assert (await cli.run("licences", "import", cli.file("lic.csv", licences_csv(DANA))))[0] == 0
    code, out = await cli.run("licences", "list", "--status", "expired")
    assert code == 0 and "\ndana\tKZ-DM-0004" in out
    old_expires = default_expiry(EXPIRED_ISSUED)
    issued, expires = old_expires, default_expiry(old_expires)

    # Named refusals, nothing written.
    code, out = await cli.run("licences", "renew", "dana", "--licence-no", "KZ-DM-0104", "--issued",
                              str(expires), "--expires", str(issued))
    assert code == 1 and "renewal refused: expires_not_after_issued" in out
    code, out = await cli.run("licences", "renew", "dana", "--licence-no", "KZ-DM-0104", "--issued", "10.06.2026",
                              "--expires", str(expires))
    assert code == 2 and "expected YYYY-MM-DD" in out
    code, out = await cli.run("licences", "renew", "dana", "--licence-no", "KZ-DM-0104", "--issued", str(issued))
    assert code == 1 and "give LOGIN --licence-no" in out
    code, out = await cli.run("licences", "renew", "dana", "--licence-no", "KZ-DM-0104", "--issued", str(issued),
                              "--expires", str(expires), "--after-revocation")
    assert code == 1 and "reason_required" in out

    code, out = await cli.run("licences", "renew", "dana", "--licence-no", "KZ-DM-0104", "--issued", str(issued),
                              "--expires", str(expires), "--reason", "renewed by the ministry",
                              "--operator", "aigerim")
    assert code == 0, out
    assert out.startswith(f"dana: renewed: KZ-DM-0104 valid {issued} until {expires} (exclusive) "
                          f"(was KZ-DM-0004 until {old_expires}); status active")
    code, out = await cli.run("licences", "show", "dana")
    assert code == 0 and "licence_no       KZ-DM-0104" in out
    events = [line for line in out.splitlines() if line.startswith("event")]
    assert events[0].endswith(f"imported -> active: import [KZ-DM-0004 {EXPIRED_ISSUED}..{old_expires}]")
    assert events[1].endswith(f"renewed -> active: renewed by the ministry [KZ-DM-0104 {issued}..{expires} "
                              f"(was KZ-DM-0004 {EXPIRED_ISSUED}..{old_expires})]")

    records = await audit_records(cli.url)
    changes = [(kind, p["action"], p["subject"]) for kind, p in records if kind.endswith("_change")]
    assert changes == [("datacentre_change", "imported", "dc-eki"), ("datacentre_change", "imported", "dc-ala"),
                       ("licence_change", "imported", "KZ-DM-0004"), ("licence_change", "renewed", "KZ-DM-0104")]
    renewed = [p for kind, p in records if kind == "licence_change" and p["action"] == "renewed"][0]
    assert renewed["previous"]["licence_no"] == "KZ-DM-0004" and renewed["operator"] == "aigerim"
    assert not [v for v in EVERY_PERSONAL_VALUE if v in json.dumps(records)]
    assert await verified(cli.url, cli.tmp_path / "audit.pem")


async def test_renewals_from_a_file(backend_cli: AsyncCli) -> None:
    cli = backend_cli
    assert (await cli.run("datacentres", "import", cli.file("dc.csv", DATACENTRES)))[0] == 0
    assert (await cli.run("licences", "import", cli.file("lic.csv", LICENCES + DANA + "\n")))[0] == 0
    new_issued = default_expiry(EXPIRED_ISSUED)
    renewals = cli.file("renewals.csv", "login,licence_no,issued,expires,reason\n"
                                        f"dana,KZ-DM-0104,{new_issued},{default_expiry(new_issued)},\n"
                                        f"alice,KZ-DM-0001,{ISSUED},{ISSUED},\n")
    code, out = await cli.run("licences", "renew", "--csv", renewals)
    assert code == 1 and out.startswith("row 3: expires: expires_not_after_issued") and "nothing renewed" in out
    code, out = await cli.run("licences", "renew", "dana", "--csv", renewals)
    assert code == 1 and "--csv FILE takes no LOGIN" in out
    Path(renewals).write_text("login,licence_no,issued,expires,reason\n"
                              f"dana,KZ-DM-0104,{new_issued},{default_expiry(new_issued)},\n")
    assert await cli.run("licences", "renew", "--csv", renewals, "--dry-run") == \
        (0, "renewals: 1 licence(s) would be renewed (dry run, nothing written)\n")
    assert await cli.run("licences", "renew", "--csv", renewals) == (0, "renewals: 1 licence(s) renewed\n")
    code, out = await cli.run("licences", "list", "--status", "active")
    assert "\ndana\tKZ-DM-0104" in out
    assert [p["subject"] for kind, p in await audit_records(cli.url)
            if kind == "licence_change" and p["action"] == "renewed"] == ["KZ-DM-0104"]


async def test_rotate_the_pii_key(backend_cli: AsyncCli, monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    import base64
    import os

    from compliance.pii import PiiBox
    from registry_fixtures import PII_KEY
    caplog.set_level(logging.DEBUG)
    cli = backend_cli
    new_key = os.urandom(32)
    key_file = Path(cli.file("new.key", base64.b64encode(new_key).decode() + "\n"))
    key_file.chmod(0o600)
    old_id, new_id = PiiBox(PII_KEY).key_id, PiiBox(new_key).key_id
    assert (await cli.run("datacentres", "import", cli.file("dc.csv", DATACENTRES)))[0] == 0
    assert (await cli.run("licences", "import", cli.file("lic.csv", LICENCES)))[0] == 0
    assert await cli.run("licences", "pii-check") == (0, f"PII key id {old_id}: 2 data centre(s), 3 licence(s): "
                                                         "every encrypted field decrypts and every lookup index "
                                                         "matches\n")
    code, out = await cli.run("licences", "rotate-pii-key", "--new-key-file", str(cli.tmp_path / "missing.key"))
    assert code == 2 and "missing.key" in out

    code, out = await cli.run("licences", "rotate-pii-key", "--new-key-file", str(key_file), "--operator", "aigerim")
    assert code == 0, out
    assert out.startswith(f"personal data re-encrypted: 2 data centre(s), 3 licence(s); PII key id {old_id} -> "
                          f"{new_id}\nnext: point compliance.pii_key_file")
    # Still configured with the old key: refused by name, nothing personal shown.
    code, out = await cli.run("licences", "pii-check")
    assert code == 1 and "8 field(s) do not open with this key" in out
    code, out = await cli.run("licences", "show", "alice", "--show-personal")
    assert code == 1 and "does not decrypt with this key" in out and "pii-check" in out
    code, out = await cli.run("licences", "import", cli.file("dana.csv", licences_csv(DANA)))
    assert code == 1 and "pii_key_mismatch" in out
    code, out = await cli.run("licences", "rotate-pii-key", "--new-key-file", str(key_file))
    assert code == 1 and out.startswith("kzpool: pii_undecryptable: 8 field(s)")

    # The pool's key now names the new file: everything opens and is found.
    monkeypatch.delenv("KZPOOL_PII_KEY")
    with_new = ("--set", f'compliance.pii_key_file="{key_file}"')
    assert (await cli.run("licences", "pii-check", *with_new))[0] == 0
    code, out = await cli.run("licences", "show", "alice", "--show-personal", *with_new)
    assert code == 0 and ALICE_IIN in out and "Alice Ivanova IE" in out
    code, out = await cli.run("licences", "rotate-pii-key", "--new-key-file", str(key_file), *with_new)
    assert code == 1 and "pii_key_unchanged" in out

    records = await audit_records(cli.url)
    rotations = [p for kind, p in records if kind == "pii_key_rotation"]
    assert rotations == [{"action": "rotated", "subject": "pii_key", "old_key_id": old_id, "new_key_id": new_id,
                          "datacentres": 2, "licences": 3,
                          "fields": ["datacentres.owner_iin_bin", "licences.iin_bin", "licences.name"],
                          "operator": "aigerim"}]
    assert await verified(cli.url, cli.tmp_path / "audit.pem")
    seen = json.dumps(records) + "\n".join(cli.outputs) + "\n".join(r.getMessage() for r in caplog.records)
    for key in (PII_KEY, new_key):
        assert key.hex() not in seen and base64.b64encode(key).decode() not in seen
    assert not [v for v in EVERY_PERSONAL_VALUE if v in json.dumps(records)]
