"""The `kzpool` command: run the pool, and the operator's subcommands."""
from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Callable

from .config import ConfigError, PoolConfig, load_config


def _install_event_loop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def config_loader(args: argparse.Namespace) -> PoolConfig:
    """The config named by --config/--set; a bad one ends the command with its message (exit 2)."""
    try:
        return load_config(getattr(args, "config", None), getattr(args, "set", None))
    except ConfigError as exc:
        print(f"kzpool: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run_subcommands(prog: str, add_subcommands: Callable[..., None], argv: list[str] | None = None,
                    prefix: tuple[str, ...] = ()) -> int:
    """One module's subcommands as a program of its own (`python -m compliance.cli licences list`),
    with the same config loading as `kzpool`; `prefix` is prepended to the arguments."""
    parser = argparse.ArgumentParser(prog=prog)
    add_subcommands(parser.add_subparsers(dest="command", required=True),
                    lambda args: load_config(getattr(args, "config", None), getattr(args, "set", None)))
    args = parser.parse_args([*prefix, *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


def cmd_run(args: argparse.Namespace) -> int:
    from .app import PoolApp
    from .logsetup import setup_logging
    from dataclasses import replace

    from .process_limits import RunningAsRoot, check_not_root, raise_open_file_limit, sessions_that_fit
    from compliance.audit_keys import AuditKeyError

    from .db import SchemaError
    cfg = config_loader(args)
    setup_logging(cfg.log.level, "json" if args.log_json else cfg.log.format, anonymise=cfg.log.anonymise,
                  repeat_interval_s=cfg.log.repeat_interval_s, identities=cfg.auth.logins)
    try:
        check_not_root(cfg.process.allow_root or args.allow_root)
    except RunningAsRoot as exc:
        print(f"kzpool: {exc}", file=sys.stderr)
        return 2
    fitted = sessions_that_fit(cfg.stratum.max_sessions, raise_open_file_limit().soft)
    if fitted != cfg.stratum.max_sessions:
        cfg = replace(cfg, stratum=replace(cfg.stratum, max_sessions=fitted))
    _install_event_loop()
    if args.worker_index is not None:
        from .app import WorkerRole
        asyncio.run(PoolApp(cfg, worker=WorkerRole(args.worker_index, args.hub)).run_until_signal())
        return 0
    workers = args.workers or cfg.process.workers
    if workers > 1:
        from .workers import Supervisor, child_arguments
        if cfg.stratum.extranonce1_size < 3:
            print("kzpool: --workers needs stratum.extranonce1_size >= 3", file=sys.stderr)
            return 2
        run_args = args.raw_argv[args.raw_argv.index("run") + 1:]
        return asyncio.run(Supervisor(cfg, child_arguments(run_args), workers).run())
    try:
        asyncio.run(PoolApp(cfg).run_until_signal())
    except SchemaError as exc:
        print(f"kzpool: {exc}", file=sys.stderr)
        return 2
    except AuditKeyError as exc:
        print(f"kzpool: audit key: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    import json

    from .config import redacted
    print(json.dumps(redacted(config_loader(args)), indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "hashing":
        from .bench_hashing import main as bench_main
        return bench_main(args.rest)
    if args.what == "stratum":
        from .bench_stratum import main as stratum_main
        return stratum_main(args.rest)
    print(f"kzpool: unknown benchmark {args.what!r}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kzpool", description="Bitcoin Stratum V1 pool server")
    sub = parser.add_subparsers(dest="command", required=True)

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="TOML config file (default: the embedded demo default)")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config key; the value is parsed as TOML")

    run = sub.add_parser("run", help="run the pool")
    config_args(run)
    run.add_argument("--allow-root", action="store_true", help="run even as root (refused by default)")
    run.add_argument("--log-json", action="store_true", help="JSON-lines logs (same as --set log.format=json)")
    run.add_argument("--workers", type=int, default=0, metavar="N",
                     help="Stratum worker processes sharing the port (default: process.workers)")
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)   # set by the supervisor
    run.add_argument("--hub", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    from compliance.audit_cli import add_subcommands as add_audit
    from compliance.cli import add_subcommands as add_registry
    from compliance.curtail_cli import add_subcommands as add_curtail
    from compliance.energy_cli import add_subcommands as add_energy

    from .db_cli import add_subcommands as add_db
    from .status_cli import add_subcommands as add_status
    add_status(sub, config_loader)
    add_registry(sub, config_loader)
    add_audit(sub, config_loader)
    add_curtail(sub, config_loader)
    add_energy(sub, config_loader)
    from payouts.cli import add_subcommands as add_payouts
    add_payouts(sub, config_loader)
    add_db(sub)

    check = sub.add_parser("config", help="print the effective configuration (secrets redacted)")
    config_args(check)
    check.set_defaults(func=cmd_config_check)

    bench = sub.add_parser("bench", help="benchmarks that print figures and ratios")
    bench.add_argument("what", choices=["hashing", "stratum"])
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw_argv)
    args.raw_argv = raw_argv
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
