"""`kzpool audit keygen | pubkey | export | verify`.

`add_subcommands(subparsers, config_loader)` plugs them into the `kzpool` parser; `config_loader`
takes the parsed Namespace (with `config` and `set`, added here) and returns the PoolConfig, of
which these commands read `database.url` and, when the config has an [audit] section,
`audit.key_file`. `--database-url` and `--key-file` override both. Also runnable alone:
`python -m compliance.audit_cli verify export.jsonl --pubkey <hex>`.
Exit codes: 0 success (verify: the log is intact), 1 the log is broken, 2 a usage or input error.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from pool.db import Database, SchemaError

from .audit_chain import ChainHead, anchor_tag, time_us_of
from .audit_keys import (DEFAULT_KEY_FILE, AuditKeyError, PublicKey, generate_key_file,
                         load_signing_key, parse_public_key)
from .audit_verify import VerifyReport

ConfigLoader = Callable[[argparse.Namespace], Any]
EXIT_OK, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _settings(args: argparse.Namespace) -> tuple[str, str]:
    """(database url, key file) from the overrides, else the config."""
    url, key_file = args.database_url, args.key_file
    if url is None or key_file is None:
        cfg = args.config_loader(args)
        url = url or cfg.database.url
        key_file = key_file or getattr(getattr(cfg, "audit", None), "key_file", DEFAULT_KEY_FILE)
    return url, key_file


def cmd_keygen(args: argparse.Namespace) -> int:
    _, key_file = _settings(args)
    key = generate_key_file(key_file)
    print(f"private key written to {key_file} (mode 0600); keep it secret and backed up")
    print(f"key id:     {key.key_id}")
    print(f"public key: {key.public.hex}")
    print(key.public.pem)
    return EXIT_OK


def cmd_pubkey(args: argparse.Namespace) -> int:
    _, key_file = _settings(args)
    key = parse_public_key(key_file)
    print(key.pem if args.pem else key.hex)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .audit_export import export_log
    url, key_file = _settings(args)
    try:
        signer = load_signing_key(key_file)
    except AuditKeyError as exc:
        signer = None
        print(f"warning: {exc}; exporting without sealing: the newest records may be unsigned",
              file=sys.stderr)

    async def work(db: Database) -> int:
        result = await export_log(db, args.out, from_us=args.from_us, to_us=args.to_us,
                                  signer=signer, operator=getpass.getuser())
        span = f"records {result.first_seq}..{result.last_seq}" if result.records else "no records"
        print(f"exported {result.records} records ({span}) to {result.path}")
        return EXIT_OK
    return _with_database(url, work)


def cmd_verify(args: argparse.Namespace) -> int:
    from .audit_anchors import (claimed_blocks_in_database, claimed_blocks_in_export,
                                coinbases_from_file, coinbases_from_node)
    from .audit_export import last_record_of_export, verify_export
    from .audit_verify import verify_database
    if bool(args.file) == bool(args.db):
        raise UsageError("give either an export FILE or --db")
    url = key_file = None
    if args.db or not args.pubkey:
        url, key_file = _settings(args)
    previous = last_record_of_export(args.previous) if args.previous else None
    keys = [parse_public_key(k) for k in args.pubkey]
    if not keys:   # the pool's own key file: fine for the operator, an auditor brings the key
        assert key_file is not None
        keys = [parse_public_key(key_file)]

    async def work(db: Database | None) -> int:
        claimed = (await claimed_blocks_in_database(db) if db is not None
                   else claimed_blocks_in_export(args.file))
        coinbases = list(claimed)
        if args.coinbases:
            coinbases += coinbases_from_file(args.coinbases)
        if args.node:
            from_node, unknown = await coinbases_from_node(
                args.node, [b.block_hash for b in claimed], cookie_file=args.node_cookie)
            coinbases += from_node
            for block_hash in unknown:
                print(f"note: the node does not have block {block_hash} on its best chain")
        if db is not None:
            report = await verify_database(db, keys, coinbases, previous=previous,
                                           require_signed=args.require_signed)
        else:
            report = verify_export(args.file, keys, coinbases, previous=previous,
                                   require_signed=not args.allow_unsigned_tail)
        _print_report(report, args.file or "the database", keys, args.json)
        return EXIT_OK if report.ok else EXIT_BROKEN

    if args.db:
        return _with_database(url, work)   # type: ignore[arg-type]
    return asyncio.run(work(None))


def _print_report(report: VerifyReport, what: str, keys: list[PublicKey], as_json: bool) -> None:
    if as_json:
        body = asdict(report)
        body.update(ok=report.ok, unsigned=report.unsigned, key_ids=sorted(report.key_ids))
        print(json.dumps(body, default=str, indent=2))
        return
    print(f"verified: {what}")
    print(f"public key: {', '.join(f'{k.hex} (id {k.key_id})' for k in keys)}")
    span = f"records {report.first_seq}..{report.last_seq}" if report.records else "no records"
    print(f"records checked: {report.records} ({span}); valid checkpoints: {report.checkpoints}")
    if report.first_seq not in (None, 1):
        print(f"note: the file starts at record {report.first_seq}; earlier records are not in it")
    if report.ok and report.records:
        print("every record is covered by a valid signature" if report.unsigned == 0 else
              f"note: the newest {report.unsigned} records (after record {report.signed_through})"
              " are not signed yet; the next checkpoint will sign them")
    if report.previous == "matches":
        print("the last record of the previous export is unchanged")
    elif report.previous == "not_in_range":
        print("note: the last record of the previous export is not in this range; not compared")
    for a in report.anchors:
        tag = anchor_tag(ChainHead(a.seq, a.record_hash)).hex() if a.record_hash else ""
        where = f"block {a.block_hash} (height {a.height})"
        if a.status != "confirmed":
            print(f"anchor: record {a.seq} in {where}: {a.status} ({a.source})")
        elif a.source == "log":
            print(f"anchor: record {a.seq} in {where}: claimed by the log, consistent; to confirm, "
                  f"find {tag} in that block's coinbase with any block explorer")
        else:
            print(f"anchor: record {a.seq} in {where}: CONFIRMED in the blockchain ({a.source})")
    if report.ok:
        print("RESULT: OK - no record was changed, removed, reordered or inserted")
    else:
        problem = report.problem
        assert problem is not None
        at = f"record {problem.seq}" if problem.seq is not None else f"line {problem.line}"
        print(f"RESULT: BROKEN at {at}: {problem.kind.value}: {problem.message}")


def _with_database(url: str, work: Callable[[Database], Any]) -> int:
    async def run() -> int:
        db = Database(url)
        try:
            await db.check_schema()
            return int(await work(db))
        finally:
            await db.close()
    return asyncio.run(run())


def _time_us(value: str) -> int:
    from pool.db_cli import parse_time
    return time_us_of(parse_time(value))


def add_subcommands(subparsers: Any, config_loader: ConfigLoader) -> None:
    """Add `audit` with keygen, pubkey, export and verify to the parent parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (default: the embedded demo default)")
    common.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key")
    common.add_argument("--database-url", help="overrides database.url")
    common.add_argument("--key-file", help=f"overrides audit.key_file (default {DEFAULT_KEY_FILE})")
    common.set_defaults(config_loader=config_loader, func=_guarded)

    audit = subparsers.add_parser("audit", help="the signed audit log: keys, export, verify")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    sub.add_parser("keygen", parents=[common], help="create the signing key, print the public key"
                   ).set_defaults(handler=cmd_keygen)
    pubkey = sub.add_parser("pubkey", parents=[common], help="print the public key (hex)")
    pubkey.add_argument("--pem", action="store_true", help="print it as PEM instead")
    pubkey.set_defaults(handler=cmd_pubkey)

    export = sub.add_parser("export", parents=[common], help="write the log as JSON lines")
    export.add_argument("--from", dest="from_us", type=_time_us, help="ISO 8601 UTC or unix s")
    export.add_argument("--to", dest="to_us", type=_time_us, help="ISO 8601 UTC or unix s")
    export.add_argument("--out", required=True, help="file to write")
    export.set_defaults(handler=cmd_export)

    verify = sub.add_parser("verify", parents=[common], help="check an export or the database")
    verify.add_argument("file", nargs="?", help="an export written by `audit export`")
    verify.add_argument("--db", action="store_true", help="verify the live database instead")
    verify.add_argument("--pubkey", action="append", default=[],
                        help="public key: 64 hex digits, PEM, or a file (repeat for old keys)")
    verify.add_argument("--previous", help="an earlier export: its last record must be unchanged")
    verify.add_argument("--coinbases", help="JSON lines of block coinbases to confirm anchors")
    verify.add_argument("--node", help="Bitcoin Core RPC URL to confirm anchors, "
                                       "e.g. http://user:pass@127.0.0.1:8332")
    verify.add_argument("--node-cookie", help="the node's .cookie file")
    verify.add_argument("--allow-unsigned-tail", action="store_true",
                        help="FILE: do not fail on records after the last checkpoint")
    verify.add_argument("--require-signed", action="store_true",
                        help="--db: fail on records after the last checkpoint")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=cmd_verify)


def _guarded(args: argparse.Namespace) -> int:
    """Run the handler; input errors print one line and exit 2, never a traceback."""
    from pool.config import ConfigError
    from pool.node_rpc import NodeError
    try:
        return int(args.handler(args))
    except (UsageError, AuditKeyError, ConfigError, SchemaError, NodeError, OSError,
            ValueError) as exc:
        print(f"kzpool audit: {exc}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    from pool.cli import run_subcommands
    return run_subcommands("python -m compliance.audit_cli", add_subcommands, argv, prefix=("audit",))


if __name__ == "__main__":
    sys.exit(main())
