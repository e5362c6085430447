"""Block templates as plain data, and the interface every template source implements.

`BlockTemplate.from_rpc` parses Bitcoin Core's `getblocktemplate` result (BIP22/23/141 fields, see
../shared/STRATUM-SPEC.md §3.1) strictly: a missing or malformed field raises `TemplateError` naming it.
Hashes are stored as internal-order bytes; the RPC's display hex is reversed at this edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol


class TemplateError(ValueError):
    """A template from a node is malformed; the message names the field."""


@dataclass(frozen=True, slots=True)
class TemplateTx:
    data: bytes          # full serialisation as sent (with witness when it has one)
    txid: bytes          # internal order
    wtxid: bytes         # internal order
    fee: int = 0         # satoshis
    weight: int = 0
    sigops: int = 0

    @property
    def has_witness(self) -> bool:
        return self.txid != self.wtxid


@dataclass(frozen=True, slots=True)
class BlockTemplate:
    version: int
    prev_hash: bytes                 # internal order == header order
    height: int
    bits: int
    curtime: int
    mintime: int
    coinbasevalue: int               # satoshis available to the coinbase outputs
    transactions: tuple[TemplateTx, ...] = ()
    default_witness_commitment: bytes | None = None   # the whole output script, when sent
    coinbaseaux: bytes = b""         # concatenated coinbaseaux values for the scriptSig
    longpollid: str | None = None
    target: int = 0
    rules: tuple[str, ...] = ()
    mutable: tuple[str, ...] = ()
    source: str = field(default="", compare=False)   # which node or source produced it

    @property
    def prev_hash_display(self) -> str:
        return self.prev_hash[::-1].hex()

    @classmethod
    def from_rpc(cls, gbt: dict, source: str = "") -> "BlockTemplate":
        def need(key: str, kind: type | tuple[type, ...]):
            if key not in gbt:
                raise TemplateError(f"getblocktemplate result lacks '{key}'")
            value = gbt[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TemplateError(f"getblocktemplate '{key}' has the wrong type: {type(value).__name__}")
            return value

        def hex32(key: str, text: object) -> bytes:
            if not isinstance(text, str) or len(text) != 64:
                raise TemplateError(f"'{key}' must be 64 hex characters")
            try:
                return bytes.fromhex(text)[::-1]
            except ValueError:
                raise TemplateError(f"'{key}' is not hex") from None

        txs = []
        for i, tx in enumerate(need("transactions", list)):
            if not isinstance(tx, dict):
                raise TemplateError(f"transactions[{i}] is not an object")
            try:
                data = bytes.fromhex(tx["data"])
            except (KeyError, TypeError, ValueError):
                raise TemplateError(f"transactions[{i}].data missing or not hex") from None
            txid = hex32(f"transactions[{i}].txid", tx.get("txid"))
            wtxid = hex32(f"transactions[{i}].hash", tx.get("hash", tx.get("txid")))
            txs.append(TemplateTx(data, txid, wtxid, int(tx.get("fee", 0)), int(tx.get("weight", 0)),
                                  int(tx.get("sigops", 0))))
        try:
            bits = int(need("bits", str), 16)
        except ValueError:
            raise TemplateError("'bits' is not hex") from None
        dwc = gbt.get("default_witness_commitment")
        aux = gbt.get("coinbaseaux") or {}
        if not isinstance(aux, dict):
            raise TemplateError("'coinbaseaux' must be an object")
        try:
            aux_bytes = b"".join(bytes.fromhex(v) for v in aux.values())
            dwc_bytes = bytes.fromhex(dwc) if dwc else None
            target = int(gbt["target"], 16) if "target" in gbt else 0
        except (TypeError, ValueError):
            raise TemplateError("'coinbaseaux', 'default_witness_commitment' or 'target' is not hex") from None
        curtime = need("curtime", int)
        return cls(
            version=need("version", int),
            prev_hash=hex32("previousblockhash", need("previousblockhash", str)),
            height=need("height", int),
            bits=bits,
            curtime=curtime,
            mintime=int(gbt.get("mintime", curtime)),
            coinbasevalue=need("coinbasevalue", int),
            transactions=tuple(txs),
            default_witness_commitment=dwc_bytes,
            coinbaseaux=aux_bytes,
            longpollid=gbt.get("longpollid"),
            target=target,
            rules=tuple(gbt.get("rules", ())),
            mutable=tuple(gbt.get("mutable", ())),
            source=source,
        )


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    """What one node said to `submitblock`: None is acceptance, otherwise Core's reason string."""
    node: str
    result: str | None
    error: str | None = None   # transport failure (node unreachable), not a rejection

    @property
    def accepted(self) -> bool:
        return self.error is None and self.result is None


class TemplateSource(Protocol):
    """Where jobs come from: the simulated chain or Bitcoin Core nodes.

    `templates()` yields the first template at once, then each replacement: a new tip (different
    prev_hash) or a refresh of the same tip. `submit_block` sends a full serialised block to every
    node the source knows and returns each node's answer.
    """
    name: str

    def templates(self) -> AsyncIterator[BlockTemplate]: ...

    async def submit_block(self, block: bytes) -> list[SubmitOutcome]: ...

    async def close(self) -> None: ...
