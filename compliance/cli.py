"""`kzpool licences ...` and `kzpool datacentres ...`: the operator's registry commands.

`add_subcommands(subparsers, config_loader)` plugs them into the `kzpool` parser; each leaf sets
`func(args) -> exit code`, as pool/cli.py does, and takes the database and the PII key from the
config that `config_loader(args)` loads (`--config` / `--set`, added here to every leaf). Also
runnable alone: `python -m compliance.cli licences list --config /etc/kzpool/kzpool.toml`.

Every command that changes the registry records its changes in the pool's signed audit log
(compliance/command_audit.py: `audit.key_file`, created in demo mode, required in production):
imports, suspensions, revocations, reinstatements, renewals and PII key rotations.

Exit codes: 0 done, 1 refused (bad rows, unknown login, wrong state, schema), 2 configuration.
IIN/BINs and names are masked on screen unless `--show-personal` asks for them.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from datetime import date
from pathlib import Path
from typing import Any, Awaitable, Callable

from pool.address import address_to_script
from pool.config import ConfigError, PoolConfig
from pool.db import Database, SchemaError

from .audit_keys import AuditKeyError
from .command_audit import command_audit
from .pii import PiiDecryptError, PiiKeyError, load_key_file, load_pii_box
from .csv_import import DEFAULT_RENEWAL_REASON
from .registry import ImportReport, LicenceRegistry, LicenceView, RegistryError

ConfigLoader = Callable[[argparse.Namespace], PoolConfig]
Work = Callable[[LicenceRegistry, PoolConfig], Awaitable[int]]


def _compliance_setting(cfg: PoolConfig, name: str, default: Any) -> Any:
    # [compliance] is added to PoolConfig by the composition root; until then, the defaults.
    return getattr(getattr(cfg, "compliance", None), name, default)


def registry_pii_box(cfg: PoolConfig) -> Any:
    """The PII key the pool itself uses: KZPOOL_PII_KEY, else compliance.pii_key_file, else (demo
    mode) the demo key beside the pool's other files (pool/app.py's rule)."""
    demo_key = str(Path(cfg.database.spill_path).parent / "pii-demo.key")
    return load_pii_box(_compliance_setting(cfg, "pii_key_file", ""), allow_demo_key=cfg.mode == "demo",
                        demo_key_path=demo_key)


async def _with_registry(cfg: PoolConfig, work: Work, audited: bool) -> int:
    pii = registry_pii_box(cfg)
    db = Database(cfg.database.url)
    try:
        await db.check_schema()
        if not audited:
            return await work(LicenceRegistry(db, pii), cfg)
        async with command_audit(db, cfg) as audit:
            return await work(LicenceRegistry(db, pii, audit=audit.record), cfg)
    finally:
        await db.close()


def _run(args: argparse.Namespace, work: Work, *, audited: bool = False) -> int:
    """`audited`: the command changes the registry, so its changes go to the audit log."""
    try:
        cfg = args.config_loader(args)
    except ConfigError as exc:
        print(f"kzpool: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_with_registry(cfg, work, audited))
    except PiiKeyError as exc:
        print(f"kzpool: {exc}", file=sys.stderr)
        return 2
    except AuditKeyError as exc:
        print(f"kzpool: audit key: {exc}", file=sys.stderr)
        return 2
    except (SchemaError, RegistryError) as exc:
        print(f"kzpool: {exc}", file=sys.stderr)
        return 1
    except PiiDecryptError as exc:
        print(f"kzpool: {exc}; is the configured PII key the registry's current one? "
              "(`kzpool licences pii-check`)", file=sys.stderr)
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
    return _run(args, work, audited=not args.dry_run)


def cmd_datacentres_import(args: argparse.Namespace) -> int:
    async def work(registry: LicenceRegistry, cfg: PoolConfig) -> int:
        return _print_report(await registry.import_datacentres(_read(args.file), dry_run=args.dry_run), args.dry_run)
    return _run(args, work, audited=not args.dry_run)


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
    previous = None
    for e in v.events:
        licence = f"{e.licence_no} {e.issued.isoformat()}..{e.expires.isoformat()}"
        if e.action == "renewed" and previous is not None:
            licence += f" (was {previous.licence_no} {previous.issued.isoformat()}..{previous.expires.isoformat()})"
        print(f"event            {e.at.isoformat(timespec='seconds')} {e.action} -> {e.status}: {e.reason} "
              f"[{licence}]")
        previous = e


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
    return _run(args, work, audited=True)


def cmd_licences_renew(args: argparse.Namespace) -> int:
    single = (args.login, args.licence_no, args.issued, args.expires)
    if args.csv:
        if any(v is not None for v in single) or args.after_revocation or args.reason is not None:
            print("kzpool licences renew: --csv FILE takes no LOGIN, --licence-no, --issued, --expires, --reason "
                  "or --after-revocation (the file has them; a revoked licence is renewed alone)", file=sys.stderr)
            return 1
    elif any(v is None for v in single) or args.dry_run:
        print("kzpool licences renew: give LOGIN --licence-no NO --issued YYYY-MM-DD --expires YYYY-MM-DD, "
              "or --csv FILE [--dry-run]", file=sys.stderr)
        return 1
    elif args.after_revocation and not (args.reason or "").strip():
        print("kzpool licences renew: reason_required: --after-revocation needs --reason (which new licence, "
              "issued by whom)", file=sys.stderr)
        return 1

    async def work(registry: LicenceRegistry, cfg: PoolConfig) -> int:
        if args.csv:
            report = await registry.import_renewals(_read(args.csv), dry_run=args.dry_run, operator=args.operator)
            bad_rows = report.lines()
            for line in bad_rows:
                print(line)
            if bad_rows:
                print(f"renewals: {len(bad_rows)} bad row(s) of {report.rows}; nothing renewed", file=sys.stderr)
                return 1
            verb = "would be renewed (dry run, nothing written)" if args.dry_run else "renewed"
            print(f"renewals: {report.rows} licence(s) {verb}")
            return 0
        view = await registry.renew(args.login, args.licence_no, args.issued, args.expires,
                                    args.reason if args.reason is not None else DEFAULT_RENEWAL_REASON,
                                    after_revocation=args.after_revocation, operator=args.operator)
        was = next((e for e in reversed(view.events[:-1])), None)
        before = f" (was {was.licence_no} until {was.expires.isoformat()})" if was else ""
        print(f"{view.dates.login}: renewed: {view.licence_no} valid {view.dates.issued.isoformat()} until "
              f"{view.dates.expires.isoformat()} (exclusive){before}; status {view.effective_status}; "
              "running pools read it within seconds")
        return 0
    return _run(args, work, audited=not args.dry_run)


def cmd_licences_rotate_pii_key(args: argparse.Namespace) -> int:
    async def work(registry: LicenceRegistry, cfg: PoolConfig) -> int:
        rotation = await registry.rotate_pii_key(load_key_file(args.new_key_file), operator=args.operator)
        print(f"personal data re-encrypted: {rotation.datacentres} data centre(s), {rotation.licences} licence(s); "
              f"PII key id {rotation.old_key_id} -> {rotation.new_key_id}")
        print("next: point compliance.pii_key_file (or KZPOOL_PII_KEY) at the new key on every kzpool machine and "
              "restart the pools; keep the old key offline for as long as backups made before now are kept",
              file=sys.stderr)
        return 0
    return _run(args, work, audited=True)


def cmd_licences_pii_check(args: argparse.Namespace) -> int:
    async def work(registry: LicenceRegistry, cfg: PoolConfig) -> int:
        check = await registry.check_pii()
        for line in check.bad:
            print(line)
        what = f"PII key id {check.key_id}: {check.datacentres} data centre(s), {check.licences} licence(s)"
        if check.bad:
            print(f"{what}: {len(check.bad)} field(s) do not open with this key", file=sys.stderr)
            return 1
        print(f"{what}: every encrypted field decrypts and every lookup index matches")
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
    renew = leaf(lic_sub, "renew", "record a licence's renewal (new number and/or dates) for an existing login",
                 cmd_licences_renew)
    renew.add_argument("login", nargs="?")
    renew.add_argument("--licence-no", help="the renewed licence's number (the same or a new one)")
    renew.add_argument("--issued", type=_iso_date, help="YYYY-MM-DD, its first valid day (Kazakhstan time)")
    renew.add_argument("--expires", type=_iso_date,
                       help="YYYY-MM-DD, its first day without a licence (Kazakhstan time; at most 3 years on)")
    renew.add_argument("--reason", help=f"recorded in the history (default: {DEFAULT_RENEWAL_REASON!r})")
    renew.add_argument("--after-revocation", action="store_true",
                       help="the licence was revoked and the regulator issued a new one: record it (a new number, "
                            "issued on or after the revocation; --reason required)")
    renew.add_argument("--csv", metavar="FILE", help="renew many, all or nothing: CSV login,licence_no,issued,"
                                                     "expires,reason")
    renew.add_argument("--dry-run", action="store_true", help="with --csv: check the file, write nothing")
    rotate = leaf(lic_sub, "rotate-pii-key", "re-encrypt the registry's personal data with a new key "
                                             "(one transaction)", cmd_licences_rotate_pii_key)
    rotate.add_argument("--new-key-file", required=True, metavar="PATH",
                        help="the new key: 32 bytes, raw, 64 hex digits or base64 (owner-only file)")
    for p in (renew, rotate):
        p.add_argument("--operator", default=getpass.getuser(), help="who does it (default: the OS user)")
    leaf(lic_sub, "pii-check", "check that every encrypted field opens with the configured PII key",
         cmd_licences_pii_check)

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
