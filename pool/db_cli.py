"""Storage subcommands: `db upgrade`, `db check`, `shares export`, `shares compact`.

`add_subcommands(subparsers)` plugs them into the `kzpool` parser; each sets `func`, a callable
taking the parsed Namespace and returning an exit code, as pool/cli.py does. Every handler takes
the database from `--database-url` (default: the embedded SQLite file). Also runnable alone:
`python -m pool.db_cli db upgrade --database-url postgresql+asyncpg://...`.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from .compaction import compact, compaction_cutoff
from .db import DEFAULT_DATABASE_URL, Database, SchemaError
from .share_export import EXPORT_FORMATS, export_shares

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: str) -> datetime:
    """ISO 8601 (no zone means UTC) or unix seconds."""
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected ISO 8601 (2025-01-31T00:00:00Z) or unix seconds") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_duration(value: str) -> timedelta:
    """'90s', '45m', '12h', '7d'."""
    unit = DURATION_UNITS.get(value[-1:])
    try:
        if unit is None:
            raise ValueError
        return timedelta(seconds=float(value[:-1]) * unit)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number and s, m, h or d") from None


async def _with_database(url: str, work: Callable[[Database], Awaitable[int]]) -> int:
    db = Database(url)
    try:
        return await work(db)
    finally:
        await db.close()


def _run(args: argparse.Namespace, work: Callable[[Database], Awaitable[int]]) -> int:
    try:
        return asyncio.run(_with_database(args.database_url, work))
    except SchemaError as exc:
        print(f"kzpool: {exc}", file=sys.stderr)
        return 1


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    async def work(db: Database) -> int:
        await db.upgrade(args.revision)
        print(f"database {db.safe_url} is at revision {await db.current_revision()}")
        return 0
    return _run(args, work)


def cmd_db_check(args: argparse.Namespace) -> int:
    async def work(db: Database) -> int:
        await db.check_schema()
        print(f"database {db.safe_url} schema is current ({await db.current_revision()})")
        return 0
    return _run(args, work)


def cmd_shares_export(args: argparse.Namespace) -> int:
    async def work(db: Database) -> int:
        await db.check_schema()
        out: TextIO = open(args.output, "w", newline="") if args.output != "-" else sys.stdout
        try:
            count = await export_shares(db, out, args.since, args.until, args.format)
        finally:
            if out is not sys.stdout:
                out.close()
        print(f"exported {count} shares", file=sys.stderr)
        return 0
    return _run(args, work)


def cmd_shares_compact(args: argparse.Namespace) -> int:
    async def work(db: Database) -> int:
        await db.check_schema()
        # --keep also spares the shares of blocks whose payout is not settled; --older-than is
        # the operator's explicit word.
        older_than = args.older_than or await compaction_cutoff(db, args.keep)
        folded = await compact(db, older_than)
        print(f"folded {folded} shares older than {older_than.isoformat()} into worker_stats_minute")
        return 0
    return _run(args, work)


def _database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL,
                        help=f"SQLAlchemy URL (default: {DEFAULT_DATABASE_URL})")


def add_subcommands(subparsers: Any) -> None:
    """Add `db` and `shares` to the parent parser's subparsers."""
    db = subparsers.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="run migrations up to this kzpool's schema")
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    _database_url(upgrade)
    upgrade.set_defaults(func=cmd_db_upgrade)
    check = db_sub.add_parser("check", help="exit 1 unless the schema matches this kzpool")
    _database_url(check)
    check.set_defaults(func=cmd_db_check)

    shares = subparsers.add_parser("shares", help="stored shares")
    shares_sub = shares.add_subparsers(dest="shares_command", required=True)
    export = shares_sub.add_parser("export", help="every stored share as JSON Lines or CSV")
    export.add_argument("--since", type=parse_time, help="first time included (ISO 8601 or unix s)")
    export.add_argument("--until", type=parse_time, help="first time excluded (ISO 8601 or unix s)")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl")
    export.add_argument("--output", default="-", help="file to write (default: stdout)")
    _database_url(export)
    export.set_defaults(func=cmd_shares_export)
    compact_cmd = shares_sub.add_parser(
        "compact", help="fold raw shares older than the payout window into per-minute statistics")
    when = compact_cmd.add_mutually_exclusive_group(required=True)
    when.add_argument("--older-than", type=parse_time, help="fold shares before this time")
    when.add_argument("--keep", type=parse_duration, help="fold shares older than this, e.g. 7d")
    _database_url(compact_cmd)
    compact_cmd.set_defaults(func=cmd_shares_compact)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pool.db_cli")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
