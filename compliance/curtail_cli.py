"""`kzpool curtail ...`: order, list and cancel curtailments.

    kzpool curtail --datacentre ID | --login L --from T --until T --reason R
    kzpool curtail list [--all]
    kzpool curtail cancel ORDER_ID --reason R

Times: `now`, `+90m` / `+2h` / `+1d` (from now), or ISO 8601; without an offset they are
Kazakhstan time (UTC+5), the time the grid operator's instructions use. The order is written to
the database; every running pool process reads it within `curtailment.poll_s` (<= 2 s), tells the
miners in scope, and disconnects them after `curtailment.grace_s`.
Exit codes: 0 done, 1 refused (bad times, unknown data centre or order, schema), 2 configuration.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import re
import sys
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable

from pool.config import ConfigError, PoolConfig
from pool.db import Database, SchemaError

from .curtailment_orders import Order, OrderError, cancel_order, create_order, kz_text, list_orders
from .standing import KZ_TIME, utc_now

ConfigLoader = Callable[[argparse.Namespace], PoolConfig]
Work = Callable[[Database, PoolConfig], Awaitable[int]]
_RELATIVE = re.compile(r"\+(\d+)([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_when(text: str, now: datetime) -> datetime:
    text = text.strip()
    if text == "now":
        return now
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return now + timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected now, +N[m|h|d] or YYYY-MM-DDTHH:MM") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=KZ_TIME)


def run_with_database(args: argparse.Namespace, work: Work) -> int:
    """Load the config, open the database at the current schema, run `work`; errors to exit codes."""
    try:
        cfg = args.config_loader(args)
    except ConfigError as exc:
        print(f"kzpool: configuration error: {exc}", file=sys.stderr)
        return 2

    async def with_db() -> int:
        db = Database(cfg.database.url)
        try:
            await db.check_schema()
            return await work(db, cfg)
        finally:
            await db.close()
    try:
        return asyncio.run(with_db())
    except (SchemaError, OrderError) as exc:
        print(f"kzpool: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:                  # a bad [electricity] / [energy] setting
        print(f"kzpool: configuration error: {exc}", file=sys.stderr)
        return 2


def _line(order: Order, now: datetime) -> str:
    cancelled = f"\tcancelled {kz_text(order.cancelled_at)}: {order.cancel_reason}" if order.cancelled_at else ""
    return (f"{order.id}\t{order.status(now)}\t{order.scope}\t{order.target}\t{kz_text(order.starts_at)}\t"
            f"{kz_text(order.ends_at)}\t{order.operator}\t{order.reason}{cancelled}")


def cmd_create(args: argparse.Namespace) -> int:
    if bool(args.datacentre) == bool(args.login):
        print("kzpool curtail: give exactly one of --datacentre and --login", file=sys.stderr)
        return 1
    if not (args.start and args.until and args.reason):
        print("kzpool curtail: --from, --until and --reason are required (or: list, cancel)", file=sys.stderr)
        return 1
    now = utc_now()
    try:
        starts_at, ends_at = parse_when(args.start, now), parse_when(args.until, now)
    except argparse.ArgumentTypeError as exc:
        print(f"kzpool curtail: {exc}", file=sys.stderr)
        return 1
    scope, target = ("datacentre", args.datacentre) if args.datacentre else ("login", args.login)

    async def work(db: Database, cfg: PoolConfig) -> int:
        order = await create_order(db, scope, target, starts_at, ends_at, args.reason, args.operator, utc_now())
        print(f"order {order.id}: {scope} {target} curtailed from {kz_text(order.starts_at)} until "
              f"{kz_text(order.ends_at)} ({order.reason}); running pools act on it within seconds")
        return 0
    return run_with_database(args, work)


def cmd_list(args: argparse.Namespace) -> int:
    async def work(db: Database, cfg: PoolConfig) -> int:
        now = utc_now()
        print("id\tstatus\tscope\ttarget\tfrom\tuntil\toperator\treason")
        for order in await list_orders(db, now, include_past=args.all):
            print(_line(order, now))
        return 0
    return run_with_database(args, work)


def cmd_cancel(args: argparse.Namespace) -> int:
    async def work(db: Database, cfg: PoolConfig) -> int:
        order = await cancel_order(db, args.order_id, args.reason, utc_now())
        print(f"order {order.id}: cancelled ({args.reason}); its miners are welcome back within seconds")
        return 0
    return run_with_database(args, work)


def config_options(p: argparse.ArgumentParser, config_loader: ConfigLoader, func: Callable[..., int]) -> None:
    p.add_argument("--config", help="TOML config file (default: the embedded demo default)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key; the value is parsed as TOML")
    p.set_defaults(func=func, config_loader=config_loader)


def add_subcommands(subparsers: Any, config_loader: ConfigLoader) -> None:
    """Add `curtail` (order; `list`, `cancel`) to the parent parser's subparsers."""
    cur = subparsers.add_parser("curtail", help="stop mining on grid power for a data centre or a login",
                                description="Order a curtailment, or list / cancel orders. Times: now, +N[m|h|d], "
                                            "or YYYY-MM-DDTHH:MM (Kazakhstan time unless an offset is given).")
    config_options(cur, config_loader, cmd_create)
    cur.add_argument("--datacentre", help="data centre id (kzpool datacentres list)")
    cur.add_argument("--login", help="one miner's login")
    cur.add_argument("--from", dest="start", metavar="T", help="start, e.g. now or 2026-12-01T18:00")
    cur.add_argument("--until", metavar="T", help="end (exclusive), e.g. +2h or 2026-12-01T22:00")
    cur.add_argument("--reason", help="why (recorded, and shown to the miners)")
    cur.add_argument("--operator", default=getpass.getuser(), help="who orders it (default: the OS user)")
    sub = cur.add_subparsers(dest="curtail_command")
    listing = sub.add_parser("list", help="orders in force or scheduled")
    config_options(listing, config_loader, cmd_list)
    listing.add_argument("--all", action="store_true", help="also ended and cancelled orders")
    cancel = sub.add_parser("cancel", help="cancel an order (its miners are welcome back)")
    config_options(cancel, config_loader, cmd_cancel)
    cancel.add_argument("order_id", type=int)
    cancel.add_argument("--reason", required=True, help="why (recorded)")


def main(argv: list[str] | None = None) -> int:
    from pool.cli import run_subcommands
    return run_subcommands("python -m compliance.curtail_cli", add_subcommands, argv)


if __name__ == "__main__":
    sys.exit(main())
