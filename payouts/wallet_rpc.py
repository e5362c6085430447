"""Bitcoin Core's wallet over JSON-RPC (pool/node_rpc.RpcClient), for payouts.

Amounts go to Core as decimal strings ("0.00123456"), which its AmountFromValue accepts: never a
float. Amounts coming back are JSON numbers Core printed with at most 8 decimals; they are read
through their shortest repr, which gives back those digits exactly for any amount under 10^7 BTC.

Errors keep node_rpc's split: `RpcError` means the wallet answered and refused (nothing was sent),
`NodeUnreachable` (timeouts included) means we do not know what happened: a payout run that gets
one stays "prepared" and the next run finds out through `find_by_comment`.

Calls that spend (sendmany, walletcreatefundedpsbt, which locks coins) go over a connection of
their own, never a reused keep-alive one: RpcClient retries a request once when a reused
connection closes before answering, which is right for reads but would send a payment twice if
the wallet had executed it and then dropped the connection.

Cancelling a PSBT run asks two more things: `output_unspent` (the node's gettxout, mempool
included, through the wallet's endpoint: Core serves every RPC there) tells whether a coin the
PSBT spends is still unspent, and `unlock` gives back the coins walletcreatefundedpsbt locked
(listlockunspent, then lockunspent for those of them still locked: a restarted wallet has already
forgotten non-persistent locks, and Core refuses to unlock a coin that is not locked).
"""
from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from hashlib import sha256
from pathlib import Path
from typing import Any

from pool.node_rpc import RpcClient, RpcError
from pool.txparse import DecodeError, Transaction

log = logging.getLogger("kzpool.payouts.wallet")

SATS_PER_BTC = 100_000_000
RPC_INVALID_ADDRESS_OR_KEY = -5       # gettransaction: "Invalid or non-wallet transaction id"
LIST_PAGE = 1000
PSBT_MAGIC = b"psbt\xff"


class WalletReplyError(ValueError):
    """The wallet answered with something that is not what Core sends."""


def btc_string(sats: int) -> str:
    if not isinstance(sats, int) or sats < 0:
        raise ValueError("amounts are non-negative integer satoshis")
    return f"{sats // SATS_PER_BTC}.{sats % SATS_PER_BTC:08d}"


def sats_from_btc(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise WalletReplyError(f"amount {value!r} is not a number")
    exact = Decimal(repr(value) if isinstance(value, float) else str(value)) * SATS_PER_BTC
    if exact != exact.to_integral_value():
        raise WalletReplyError(f"amount {value!r} has more than 8 decimals")
    return int(exact)


@dataclass(frozen=True, slots=True)
class WalletTx:
    txid: str
    confirmations: int
    fee_sats: int                                        # paid by the wallet (positive)
    sent: dict[str, int] = field(default_factory=dict)   # address -> sats, "send" entries
    comment: str = ""
    time: int = 0                                        # unix s the wallet first knew it (0: unknown)


@dataclass(frozen=True, slots=True)
class FundedPsbt:
    psbt: str            # base64
    fee_sats: int
    txid: str            # of the unsigned transaction; signing segwit inputs does not change it


def _compact_size(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first < 0xFD:
        return first, pos + 1
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(data[pos + 1:pos + 1 + width], "little"), pos + 1 + width


def psbt_unsigned_tx(psbt_b64: str) -> bytes:
    """The unsigned transaction in a PSBT's global map (BIP174 key type 0x00)."""
    data = base64.b64decode(psbt_b64, validate=True)
    if not data.startswith(PSBT_MAGIC):
        raise WalletReplyError("not a PSBT (bad magic)")
    pos = len(PSBT_MAGIC)
    while pos < len(data):
        key_len, pos = _compact_size(data, pos)
        if key_len == 0:
            break
        key, pos = data[pos:pos + key_len], pos + key_len
        value_len, pos = _compact_size(data, pos)
        value, pos = data[pos:pos + value_len], pos + value_len
        if key == b"\x00":
            return value
    raise WalletReplyError("PSBT has no unsigned transaction")


def psbt_txid(psbt_b64: str) -> str:
    return sha256(sha256(psbt_unsigned_tx(psbt_b64)).digest()).digest()[::-1].hex()


Outpoint = tuple[str, int]          # (txid as display hex, output index)


def psbt_inputs(psbt_b64: str) -> list[Outpoint]:
    """The coins a PSBT's transaction spends, as (txid display hex, vout)."""
    try:
        tx = Transaction.deserialize(psbt_unsigned_tx(psbt_b64))
    except (DecodeError, IndexError, ValueError) as exc:
        raise WalletReplyError(f"PSBT's unsigned transaction does not parse: {exc}") from None
    return [(i.prev_txid[::-1].hex(), i.prev_index) for i in tx.inputs]


class WalletRpc:
    def __init__(self, url: str, *, user: str | None = None, password: str | None = None,
                 cookie_file: str | Path | None = None, timeout_s: float = 60.0) -> None:
        self._client_args: dict[str, Any] = dict(user=user or None, password=password or None,
                                                 cookie_file=cookie_file or None, timeout_s=timeout_s)
        self._url = url
        self.rpc = RpcClient(url, **self._client_args)

    async def _spend(self, method: str, *params: Any) -> Any:
        """A spending call on a fresh connection: sent at most once, whatever happens to it."""
        client = RpcClient(self._url, **self._client_args)
        try:
            return await client.call(method, *params)
        finally:
            await client.close()

    @property
    def name(self) -> str:
        return self.rpc.name

    async def balance_sats(self) -> int:
        """The wallet's spendable balance: also the check that the wallet answers at all before a
        run is committed (a run that cannot even reach its wallet is not left in doubt)."""
        return sats_from_btc(await self.rpc.call("getbalance"))

    async def sendmany(self, outputs: Mapping[str, int], comment: str, conf_target: int) -> str:
        """One transaction paying every output; `comment` is stored in the wallet with it (the run's
        label, found again by `find_by_comment`). Returns the txid."""
        amounts = {address: btc_string(sats) for address, sats in outputs.items()}
        txid = await self._spend("sendmany", "", amounts, 1, comment, [], True, conf_target, "economical")
        if not isinstance(txid, str) or len(txid) != 64:
            raise WalletReplyError(f"sendmany returned {txid!r}, not a txid")
        return txid

    async def transaction(self, txid: str) -> WalletTx | None:
        try:
            raw = await self.rpc.call("gettransaction", txid)
        except RpcError as exc:
            if exc.code == RPC_INVALID_ADDRESS_OR_KEY:
                return None
            raise
        if not isinstance(raw, dict):
            raise WalletReplyError("gettransaction result is not an object")
        sent: dict[str, int] = {}
        for entry in raw.get("details") or ():
            if entry.get("category") == "send" and entry.get("address"):
                sent[entry["address"]] = sent.get(entry["address"], 0) - sats_from_btc(entry["amount"])
        return WalletTx(str(raw["txid"]), int(raw.get("confirmations", 0)), -sats_from_btc(raw.get("fee", 0)),
                        sent, str(raw.get("comment", "")), int(raw.get("timereceived") or raw.get("time") or 0))

    async def find_by_comment(self, comment: str, scan: int) -> WalletTx | None:
        """The wallet transaction carrying `comment`, searching the newest `scan` entries."""
        skip = 0
        while skip < scan:
            page = await self.rpc.call("listtransactions", "*", LIST_PAGE, skip, True)
            if not isinstance(page, list):
                raise WalletReplyError("listtransactions result is not an array")
            for entry in page:
                if isinstance(entry, dict) and entry.get("comment") == comment and entry.get("txid"):
                    return await self.transaction(entry["txid"])
            if len(page) < LIST_PAGE:
                return None
            skip += LIST_PAGE
        return None

    async def create_funded_psbt(self, outputs: Mapping[str, int], conf_target: int) -> FundedPsbt:
        """An unsigned, funded PSBT (inputs chosen and locked by the wallet) for cold signing."""
        raw = await self._spend("walletcreatefundedpsbt", [],
                                  [{address: btc_string(sats)} for address, sats in outputs.items()], 0,
                                  {"conf_target": conf_target, "lockUnspents": True, "replaceable": True})
        if not isinstance(raw, dict) or not isinstance(raw.get("psbt"), str):
            raise WalletReplyError("walletcreatefundedpsbt result has no psbt")
        return FundedPsbt(raw["psbt"], sats_from_btc(raw.get("fee", 0)), psbt_txid(raw["psbt"]))

    async def output_unspent(self, txid: str, vout: int) -> bool:
        """True while the coin is unspent in the chain and by the node's mempool (gettxout with
        include_mempool): False once anything spends it, or when the node never knew it."""
        raw = await self.rpc.call("gettxout", txid, vout, True)
        if raw is None:
            return False
        if not isinstance(raw, dict):
            raise WalletReplyError("gettxout result is neither null nor an object")
        return True

    async def unlock(self, outpoints: list[Outpoint]) -> list[Outpoint]:
        """Unlock those of `outpoints` the wallet holds locked; returns them."""
        locked = await self.rpc.call("listlockunspent")
        if not isinstance(locked, list):
            raise WalletReplyError("listlockunspent result is not an array")
        held = {(str(o.get("txid")), o.get("vout")) for o in locked if isinstance(o, dict)}
        targets = [o for o in dict.fromkeys(outpoints) if o in held]
        if targets:
            done = await self.rpc.call("lockunspent", True, [{"txid": t, "vout": v} for t, v in targets])
            if done is not True:
                raise WalletReplyError(f"lockunspent returned {done!r}, not true")
        return targets

    async def close(self) -> None:
        await self.rpc.close()
