"""Where the coinbases come from that confirm the audit log's blockchain anchors.

Every block the pool builds carries the chain head in its coinbase scriptSig (audit_chain.anchor_tag).
The log's own block_found records say which blocks the pool found; a source independent of the
log (a Bitcoin node, or a file of coinbases copied from a block explorer) says what those blocks
really contain. The verifier compares: a block's anchor that matches the record at its seq proves
that record (and, through the chain, every one before it) existed unchanged when the block was
mined.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import text

from pool.db import Database

from .audit_chain import ChainRecord
from .audit_events import BLOCK_FOUND
from .audit_export import read_export
from .audit_verify import BlockCoinbase

LOG_SOURCE = "log"     # claimed by the log itself: consistency only, not proof


def claimed_blocks(records: Iterable[ChainRecord]) -> list[BlockCoinbase]:
    """The blocks the log's block_found records name, with the coinbase scriptSig they claim."""
    found = []
    for record in records:
        if record.kind != BLOCK_FOUND:
            continue
        try:
            payload = json.loads(record.payload_json)
            found.append(BlockCoinbase(str(payload["hash"]), payload.get("height"),
                                       bytes.fromhex(payload.get("script_sig") or ""), LOG_SOURCE))
        except (ValueError, KeyError, TypeError):
            continue   # a malformed payload is the chain check's business, not the anchors'
    return found


def claimed_blocks_in_export(path: str | Path) -> list[BlockCoinbase]:
    return claimed_blocks(item for _, item in read_export(path) if isinstance(item, ChainRecord))


async def claimed_blocks_in_database(db: Database) -> list[BlockCoinbase]:
    async with db.engine.connect() as conn:
        rows = (await conn.execute(
            text("SELECT seq, time_us, kind, payload FROM audit_log WHERE kind = :kind "
                 "ORDER BY seq"), {"kind": BLOCK_FOUND})).all()
    return claimed_blocks(ChainRecord(row.seq, "", row.kind, row.payload, "", "") for row in rows)


def coinbases_from_file(path: str | Path) -> list[BlockCoinbase]:
    """JSON lines {"block_hash": hex, "height": n, "script_sig": hex}; `script_sig` is what a
    block explorer or `bitcoin-cli getblock <hash> 2` shows as the coinbase input's script."""
    out = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(BlockCoinbase(str(row.get("block_hash") or row["hash"]),
                                         row.get("height"), bytes.fromhex(row["script_sig"]),
                                         f"file {Path(path).name}"))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{number}: expected block_hash, height, script_sig "
                                 f"({exc})") from None
    return out


async def coinbases_from_node(url: str, block_hashes: Iterable[str], *,
                              cookie_file: str | None = None) -> tuple[list[BlockCoinbase], list[str]]:
    """The coinbases of `block_hashes` as a Bitcoin Core node has them, and the hashes the node
    does not have (orphaned, another network, or never accepted)."""
    from pool.node_rpc import RpcClient, RpcError
    client = RpcClient(url, cookie_file=cookie_file)
    found, unknown = [], []
    try:
        for block_hash in dict.fromkeys(block_hashes):
            try:
                block = await client.call("getblock", block_hash, 2)
            except RpcError:
                unknown.append(block_hash)
                continue
            if block.get("confirmations", 0) < 0:   # known to the node but not on its best chain
                unknown.append(block_hash)
                continue
            script_sig = bytes.fromhex(block["tx"][0]["vin"][0]["coinbase"])
            found.append(BlockCoinbase(block_hash, block.get("height"), script_sig,
                                       f"node {client.name}"))
    finally:
        await client.close()
    return found, unknown
