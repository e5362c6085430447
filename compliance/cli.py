"""`kzpool licences ...` and `kzpool datacentres ...`: the operator's registry commands.

`add_subcommands(subparsers, config_loader)` plugs them into the `kzpool` parser; each leaf sets
`func(args) -> exit code`, as pool/cli.py does, and takes the database and the PII key from the
config that `config_loader(args)` loads (`--config` / `--set`, added here to every leaf). Also
runnable alone: `python -m compliance.cli licences list --config /etc/kzpool/kzpool.toml`.

Exit codes: 0 done, 1 refused (bad rows, unknown login, wrong state, schema), 2 configuration.
IIN/BINs and names are masked on screen unless `--show-personal` asks for them.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import date
from pathlib import Path
from typing import Any, Awaitable, Callable

from pool.address import address_to_script
from pool.config import ConfigError, PoolConfig
from pool.db import Database, SchemaError

from .pii import PiiKeyError, load_pii_box
from .registry import ImportReport, LicenceRegistry, LicenceView, RegistryError

ConfigLoader = Callable[[argparse.Namespace], PoolConfig]
Work = Callable[[LicenceRegistry, PoolConfig], Awaitable[int]]


def _compliance_setting(cfg: PoolConfig, name: str, default: Any) -> Any:
    # [compliance] is added to PoolConfig by the composition root; until then, the defaults.
    return getattr(getattr(cfg, "compliance", None), name, default)


async def _with_registry(cfg: PoolConfig, work: Work) -> int:
    pii = load_pii_box(_compliance_setting(cfg, "pii_key_file", ""), allow_demo_key=cfg.mode == "demo")
    db = Database(cfg.database.url)
    try:
        await db.check_schema()
        return await work(LicenceRegistry(db, pii), cfg)
    finally:
        await db.close()


def _run(args: argparse.Namespace, work: Work) -> int:
    try:
        cfg = args.config_loader(args)
    except ConfigError as exc:
        print(f"kzpool: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_with_registry(cfg, work))
    except PiiKeyError as exc:
        print(f"kzpool: {exc}", file=sys.stderr)
        return 2
    except (SchemaError, RegistryError) as exc:
        print(f"kzpool: {exc}", file=sys.stderr)
        return 1


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise RegistryError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RegistryError(f"{path}: not UTF-8 text") from None


def _print_report(report: ImportReport, dry_run: bool) -> int:
    bad_rows = report.lines()
    for line in bad_rows:
        print(line)
    if bad_rows:
        print(f"{report.kind}: {len(bad_rows)} bad row(s) of {report.rows}; nothing imported", file=sys.stderr)
        return 1
    verb = "would import (dry run, nothing written)" if dry_run else "imported"
    print(f"{report.kind}: {report.rows} row(s) {verb}")
    return 0


def cmd_licences_import(args: argparse.Namespace) -> int:
    async def work(registry: LicenceRegistry, cfg: PoolConfig) -> int:
        def address_check(address: str) -> None:
            address_to_script(address, cfg.chain.network)
        report = await registry.import_licences(_read(args.file), dry_run=args.dry_run, address_check=address_check)
        return _print_report(report, args.dry_run)
    return _run(args, work)


def cmd_datacentres_import(args: argparse.Namespace) -> int:
    async def work(registry: LicenceRegistry, cfg: PoolConfig) -> int:
        return _print_report(await registry.import_datacentres(_read(args.file), dry_run=args.dry_run), args.dry_run)
    return _run(args, work)


def cmd_datacentres_list(args: argparse.Namespace) -> int:
    async def work(registry: LicenceRegistry, cfg: PoolConfig) -> int:
        for dc_id, name, region, cidrs in await registry.list_datacentres():
            print(f"{dc_id}\t{name}\t{region}\t{' '.join(cidrs)}")
        return 0
    return _run(args, work)


def _line(v: LicenceView) -> str:
    d = v.dates
    return "\t".join([d.login, v.licence_no, v.subtype, v.effective_status, d.issued.isoformat(),
                      d.expires.isoformat(), v.datacentre_id, v.iin_bin, v.name])


def cmd_licences_list(args: argparse.Namespace) -> int:
    async def work(registry: LicenceRegistry, cfg: PoolConfig) -> int:
        print("login\tlicence_no\tsubtype\tstatus\tissued\texpires\tdatacentre\tiin_bin\tname")
        for view in await registry.list_licences(reveal=args.show_personal):
            if args.status is None or view.effective_status == args.status:
                print(_line(view))
        return 0
    return _run(args, work)


def _print_view(v: LicenceView) -> None:
    d = v.dates
    for key, value in [("login", d.login), ("licence_no", v.licence_no), ("subtype", v.subtype),
                       ("status", v.effective_status), ("recorded_status", d.status.value),
                       ("suspended_until", d.suspended_until.isoformat() if d.suspended_until else "-"),
                       ("reason", d.status_reason or "-"), ("issued", d.issued.isoformat()),
                       ("expires", d.expires.isoformat()), ("datacentre", v.datacentre_id),
                       ("payout_address", v.payout_address), ("iin_bin", v.iin_bin), ("name", v.name)]:
        print(f"{key:16} {value}")
    for at, action, status, reason in v.events:
        print(f"event            {at.isoformat(timespec='seconds')} {action} -> {status}: {reason}")


def cmd_licences_show(args: argparse.Namespace) -> int:
    async def work(registry: LicenceRegistry, cfg: PoolConfig) -> int:
        _print_view(await registry.show(args.login, reveal=args.show_personal))
        return 0
    return _run(args, work)


def cmd_licences_change(args: argparse.Namespace) -> int:
    async def work(registry: LicenceRegistry, cfg: PoolConfig) -> int:
        if args.action == "suspend":
            view = await registry.suspend(args.login, args.until, args.reason)
        elif args.action == "revoke":
            view = await registry.revoke(args.login, args.reason)
        else:
            view = await registry.reinstate(args.login, args.reason)
        effect = "; its connected miners are disconnected within seconds" if args.action != "reinstate" else ""
        print(f"{view.dates.login}: {view.effective_status} ({args.reason}){effect}")
        return 0
    return _run(args, work)


def _iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected YYYY-MM-DD") from None


def add_subcommands(subparsers: Any, config_loader: ConfigLoader) -> None:
    """Add `licences` and `datacentres` to the parent parser's subparsers."""
    def leaf(parent: Any, name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> Any:
        p = parent.add_parser(name, help=help_text)
        p.add_argument("--config", help="TOML config file (default: the embedded demo default)")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config key; the value is parsed as TOML")
        p.set_defaults(func=func, config_loader=config_loader)
        return p

    lic = subparsers.add_parser("licences", help="the licence registry of digital miners")
    lic_sub = lic.add_subparsers(dest="licences_command", required=True)
    imp = leaf(lic_sub, "import", "import licences from CSV (all or nothing)", cmd_licences_import)
    imp.add_argument("file", help="CSV: login,iin_bin,name,licence_no,subtype,issued,expires,status,"
                                  "suspended_until,datacentre,payout_address")
    imp.add_argument("--dry-run", action="store_true", help="check the file, write nothing")
    listing = leaf(lic_sub, "list", "list licences", cmd_licences_list)
    listing.add_argument("--status", choices=["active", "suspended", "revoked", "expired", "not_yet_valid"])
    show = leaf(lic_sub, "show", "one licence and its history", cmd_licences_show)
    show.add_argument("login")
    for p in (listing, show):
        p.add_argument("--show-personal", action="store_true",
                       help="print IIN/BINs and names in full (personal data: mind where the output goes)")
    for action, help_text in (("suspend", "suspend a licence until a date"), ("revoke", "revoke a licence"),
                              ("reinstate", "make a suspended or wrongly revoked licence active again")):
        p = leaf(lic_sub, action, help_text, cmd_licences_change)
        p.add_argument("login")
        p.add_argument("--reason", required=True, help="why (recorded, and shown to the miner)")
        p.set_defaults(action=action)
        if action == "suspend":
            p.add_argument("--until", required=True, type=_iso_date,
                           help="YYYY-MM-DD, the first day (Kazakhstan time) the licence is valid again")

    dcs = subparsers.add_parser("datacentres", help="digital mining data centres and their IP ranges")
    dcs_sub = dcs.add_subparsers(dest="datacentres_command", required=True)
    dc_imp = leaf(dcs_sub, "import", "import data centres from CSV (all or nothing)", cmd_datacentres_import)
    dc_imp.add_argument("file", help="CSV: id,name,region,address,owner_iin_bin,cidrs (cidrs space-separated)")
    dc_imp.add_argument("--dry-run", action="store_true", help="check the file, write nothing")
    leaf(dcs_sub, "list", "list data centres", cmd_datacentres_list)


def main(argv: list[str] | None = None) -> int:
    from pool.cli import run_subcommands
    return run_subcommands("python -m compliance.cli", add_subcommands, argv)


if __name__ == "__main__":
    sys.exit(main())
