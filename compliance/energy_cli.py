"""`kzpool energy ...`: the monthly energy report and the day-ahead schedule import.

    kzpool energy report --month YYYY-MM [--by-hour] [--format csv|json] [--output FILE]
    kzpool energy import-schedule FILE [--dry-run] [--operator NAME]

The report is computed from the database (shares and compacted minutes) with the `[electricity]`
plan and the `[energy] fee_rates` table of the config; see compliance/energy_report.py. With
`--by-hour` it is the hourly volume check: per Kazakhstan hour and day-ahead allotment, the allotted
kWh against the energy used. The import
takes the day-ahead CSV of compliance/schedule.py, all or nothing; an applied import writes one
record to the pool's signed audit log (kind `day_ahead_schedule`: rows, dates, scopes, allotted kWh,
the file's SHA-256, the operator), through compliance/command_audit.py as other commands do.
Exit codes: 0 done, 1 refused (bad rows, schema), 2 configuration (an audit key missing in production).
"""
from __future__ import annotations

import argparse
import getpass
import hashlib
import sys
from pathlib import Path
from typing import Any, Callable

from pool.config import PoolConfig
from pool.db import Database

from .audit_keys import AuditKeyError
from .command_audit import command_audit
from .curtail_cli import config_options, run_with_database
from .energy import fee_rates_from_settings, parse_month
from .energy_report import build_hourly_volumes, build_report, hourly_to_csv, hourly_to_json, to_csv, to_json
from .power_plan import plan_from_settings, setting
from .schedule import DAY_AHEAD_COLUMNS, import_day_ahead

ConfigLoader = Callable[[argparse.Namespace], PoolConfig]


def _month(value: str) -> tuple[int, int]:
    try:
        return parse_month(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_report(args: argparse.Namespace) -> int:
    async def work(db: Database, cfg: PoolConfig) -> int:
        plan = plan_from_settings(getattr(cfg, "electricity", None))
        month = f"{args.month[0]:04d}-{args.month[1]:02d}"
        if args.by_hour:
            volumes = await build_hourly_volumes(db, plan, *args.month)
            text = hourly_to_json(volumes, month) if args.format == "json" else hourly_to_csv(volumes)
            what = f"{len(volumes)} allotment hour(s), {sum(1 for v in volumes if v.over_kwh > 0)} over"
        else:
            rates = fee_rates_from_settings(setting(getattr(cfg, "energy", None), "fee_rates", None))
            report = await build_report(db, plan, rates, *args.month)
            text = to_json(report) if args.format == "json" else to_csv(report)
            what = f"{len(report.miners)} miner(s)"
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
            print(f"energy report {month}: {what} written to {args.output}")
        else:
            sys.stdout.write(text)
        return 0
    return run_with_database(args, work)


def cmd_import_schedule(args: argparse.Namespace) -> int:
    try:
        data = Path(args.file).read_bytes()
        text = data.decode("utf-8-sig")
    except OSError as exc:
        print(f"kzpool: {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    except UnicodeDecodeError:
        print(f"kzpool: {args.file}: not UTF-8 text", file=sys.stderr)
        return 1

    async def work(db: Database, cfg: PoolConfig) -> int:
        async def run(audit: Any) -> Any:
            return await import_day_ahead(db, text, dry_run=args.dry_run, audit=audit,
                                          sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                                          source=Path(args.file).name, operator=args.operator)
        if args.dry_run:
            report = await run(None)
        else:
            try:
                async with command_audit(db, cfg) as log:
                    report = await run(log.record)
            except AuditKeyError as exc:
                print(f"kzpool: audit key: {exc}", file=sys.stderr)
                return 2
        for problem in report.problems:
            print(problem)
        if report.problems:
            print(f"day-ahead schedule: {len(report.problems)} problem(s); nothing imported", file=sys.stderr)
            return 1
        verb = "would replace (dry run, nothing written)" if args.dry_run else "replaced"
        recorded = "" if args.dry_run else f" (import {report.import_seq}, sha256 {report.record['sha256'][:16]}...)"
        print(f"day-ahead schedule: {report.rows} row(s) read, {verb} {report.groups} day schedule(s){recorded}")
        return 0
    return run_with_database(args, work)


def add_subcommands(subparsers: Any, config_loader: ConfigLoader) -> None:
    """Add `energy` (`report`, `import-schedule`) to the parent parser's subparsers."""
    energy = subparsers.add_parser("energy", help="estimated energy, quotas, schedules and the mining fee")
    sub = energy.add_subparsers(dest="energy_command", required=True)
    report = sub.add_parser("report", help="per-miner kWh, quota, hours outside schedule, fee estimate for a month")
    config_options(report, config_loader, cmd_report)
    report.add_argument("--month", required=True, type=_month, help="YYYY-MM, a Kazakhstan calendar month")
    report.add_argument("--by-hour", action="store_true",
                        help="the hourly volume check: per KZ hour and day-ahead allotment, allotted vs used kWh")
    report.add_argument("--format", choices=["csv", "json"], default="csv")
    report.add_argument("--output", help="write to this file instead of standard output")
    imp = sub.add_parser("import-schedule", help="import a day-ahead electricity schedule (CSV, all or nothing)")
    config_options(imp, config_loader, cmd_import_schedule)
    imp.add_argument("file", help="CSV: " + ",".join(DAY_AHEAD_COLUMNS) + " (date and hour in Kazakhstan time)")
    imp.add_argument("--dry-run", action="store_true", help="check the file, write nothing")
    imp.add_argument("--operator", default=getpass.getuser(), help="who imports it, for the audit record "
                                                                  "(default: the OS user)")


def main(argv: list[str] | None = None) -> int:
    from pool.cli import run_subcommands
    return run_subcommands("python -m compliance.energy_cli", add_subcommands, argv)


if __name__ == "__main__":
    sys.exit(main())
