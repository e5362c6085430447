"""A Bitcoin Core wallet stand-in for payout tests: a real HTTP/1.1 JSON-RPC server on 127.0.0.1.

As strict as Core where payouts touch it: POST to `/wallet/<name>` only (-18 for another wallet,
-19 without one), HTTP basic auth (401, empty body), JSON-RPC 1.0 envelope, positional or named
params with Core's type errors (-3), Core's HTTP status per error. Amounts are parsed as Core's
AmountFromValue does (number or string, at most 8 decimals, -3 otherwise; <= 0 is -3 "Invalid
amount for send"); addresses must be valid on regtest (-5); a duplicated address is -8; an
output under the dust limit is -4; more than the balance is -6 "Insufficient funds".

Methods: sendmany (one transaction, `comment` stored with it, returns the txid), gettransaction
(-5 "Invalid or non-wallet transaction id"), listtransactions (newest `count` after `skip`,
oldest first, one entry per output, `comment` when set), walletcreatefundedpsbt (a real BIP174
PSBT of an unsigned transaction spending the wallet's coins, which it locks), listlockunspent,
lockunspent (Core's checks, all before any change: -8 unknown transaction, vout out of bounds,
expected unspent output, expected locked output / output already locked; -3 for a malformed
outpoint object), gettxout (a node RPC Core also serves on the wallet's endpoint: null for a coin
spent in the chain, or in the mempool unless include_mempool is false, or never known).

Coins: every transaction the stand-in builds spends one coin of its own (a made-up outpoint worth
the spendable balance); the coin is spent when the transaction reaches the wallet (sendmany, or
the cold signer's broadcast). A PSBT's coin stays locked until `lockunspent true` or its
broadcast; unlocking does not make the PSBT unsignable, exactly as in Core: its coin is unspent.

Crash injection: `refuse_next[method] = (code, message)` answers the next call with that error
before doing anything; `drop_reply[method] = True` executes the next call (sendmany creates the
transaction) and then closes the connection without answering, as if the pool died in between.
`sign_and_broadcast(psbt)` plays the cold signer (refused, as the network would, once the PSBT's
coin is spent); `broadcast_replacement(psbt)` a fee bump of it (same coin and outputs, higher fee,
another txid); `mine(n)` confirms the wallet's transactions.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from hashlib import sha256
from typing import Any

from core_rpc_params import TYPE_NAMES, RpcFault, Specs, check_params
from pool.address import AddressError, address_to_script
from pool.txparse import Transaction, TxIn, TxOut

SATS = 100_000_000
DUST_SATS = 546
FEE_RATE_SAT_VB = 2
_STATUS_TEXT = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
                500: "Internal Server Error"}
_NUMBER = (int, float)
# name -> [(argument, accepted types, required)], as Core's RPC help lists them.
_SPECS: Specs = {
    "sendmany": [("dummy", (str,), True), ("amounts", (dict,), True), ("minconf", (int,), False),
                 ("comment", (str,), False), ("subtractfeefrom", (list,), False), ("replaceable", (bool,), False),
                 ("conf_target", (int,), False), ("estimate_mode", (str,), False),
                 ("fee_rate", (int, float, str), False), ("verbose", (bool,), False)],
    "gettransaction": [("txid", (str,), True), ("include_watchonly", (bool,), False), ("verbose", (bool,), False)],
    "listtransactions": [("label", (str,), False), ("count", (int,), False), ("skip", (int,), False),
                         ("include_watchonly", (bool,), False)],
    "walletcreatefundedpsbt": [("inputs", (list,), False), ("outputs", (list, dict), True),
                               ("locktime", (int,), False), ("options", (dict,), False),
                               ("bip32derivs", (bool,), False)],
    "getbalance": [],
    "listlockunspent": [],
    "lockunspent": [("unlock", (bool,), True), ("transactions", (list,), False), ("persistent", (bool,), False)],
    "gettxout": [("txid", (str,), True), ("n", (int,), True), ("include_mempool", (bool,), False)],
}


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def amount_from_value(value: Any) -> int:
    """Core's AmountFromValue: a JSON number or string, in BTC, at most 8 decimals."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RpcFault(-3, "Amount is not a number or string")
    try:
        exact = Decimal(repr(value) if isinstance(value, float) else str(value)) * SATS
    except InvalidOperation:
        raise RpcFault(-3, "Invalid amount") from None
    if exact != exact.to_integral_value():
        raise RpcFault(-3, "Invalid amount")
    if not 0 <= exact <= 21_000_000 * SATS:
        raise RpcFault(-3, "Amount out of range")
    return int(exact)


def btc(sats: int) -> float:
    return sats / SATS          # what Core prints: a JSON number with at most 8 decimals


@dataclass
class StandinTx:
    txid: str
    outputs: list[tuple[str, int]]          # (address, sats) paid to others
    fee: int
    comment: str
    raw: bytes
    time: int
    confirmations: int = 0


@dataclass
class WalletStandin:
    user: str = "payouts"
    password: str = "wallet-standin-password"
    wallet: str = "kzpool-payouts"
    network: str = "regtest"
    balance_sats: int = 50 * SATS
    port: int = 0
    txs: list[StandinTx] = field(default_factory=list)
    calls: list[tuple[str, list]] = field(default_factory=list)
    refuse_next: dict[str, tuple[int, str]] = field(default_factory=dict)
    drop_reply: dict[str, bool] = field(default_factory=dict)
    locked_sats: int = 0
    # txid of each PSBT not yet broadcast -> (outputs, fee, total paid, the coin it spends)
    pending_psbts: dict[str, tuple[list[tuple[str, int]], int, int, tuple[str, int]]] = field(default_factory=dict)
    coins: dict[tuple[str, int], int] = field(default_factory=dict)       # (txid hex, vout) -> sats
    spent_by: dict[tuple[str, int], str] = field(default_factory=dict)    # coin -> txid spending it
    locks: dict[tuple[str, int], int] = field(default_factory=dict)       # locked coin -> sats it holds back
    clock: Callable[[], float] = time.time        # the wallet's own clock: a transaction's "time"
    _server: Any = None
    _counter: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/wallet/{self.wallet}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # -- test helpers ---------------------------------------------------------------------------
    def paid(self) -> dict[str, int]:
        """Address -> sats over every transaction the wallet made."""
        out: dict[str, int] = {}
        for tx in self.txs:
            for address, sats in tx.outputs:
                out[address] = out.get(address, 0) + sats
        return out

    def mine(self, blocks: int = 1) -> None:
        for tx in self.txs:
            tx.confirmations += blocks

    def sign_and_broadcast(self, psbt_b64: str) -> str:
        """The cold signer: the PSBT's transaction becomes a wallet transaction (same txid: the
        inputs are segwit, signatures go to the witness)."""
        raw = _psbt_raw(psbt_b64)
        txid = Transaction.deserialize(raw).txid[::-1].hex()
        outputs, fee, total, coin = self.pending_psbts[txid]
        if coin in self.spent_by:
            raise ValueError("bad-txns-inputs-missingorspent")      # what the network answers
        del self.pending_psbts[txid]
        self._release(coin)
        self.balance_sats -= total + fee
        return self._record(raw, outputs, fee, "", coin)

    def broadcast_replacement(self, psbt_b64: str, extra_fee: int = 1_000) -> str:
        """A fee bump of the PSBT's transaction signed and broadcast: the same coin and outputs,
        a higher fee, so another txid; the original txid never reaches the wallet."""
        raw = _psbt_raw(psbt_b64)
        tx = Transaction.deserialize(raw)
        outputs, fee, total, coin = self.pending_psbts.pop(tx.txid[::-1].hex())
        if coin in self.spent_by:
            raise ValueError("bad-txns-inputs-missingorspent")
        change = tx.outputs[-1]
        bumped = Transaction(tx.version, tx.inputs, tx.outputs[:-1] + (TxOut(change.value - extra_fee,
                                                                           change.script_pubkey),), tx.locktime)
        self._release(coin)
        self.balance_sats -= total + fee + extra_fee
        return self._record(bumped.serialize_legacy(), outputs, fee + extra_fee, "", coin)

    def _release(self, coin: tuple[str, int]) -> None:
        self.locked_sats -= self.locks.pop(coin, 0)

    # -- HTTP -----------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await _read_request(reader)) is not None:
                verb, path, headers, body = request
                status, payload, drop = await self._respond(verb, path, headers, body)
                if drop:
                    break                      # executed, never answered
                writer.write(f"HTTP/1.1 {status} {_STATUS_TEXT[status]}\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _respond(self, verb: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, bool]:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        try:
            given = base64.b64decode(token, validate=True).decode()
        except ValueError:
            given = ""
        if scheme != "Basic" or given != f"{self.user}:{self.password}":
            return 401, b"", False
        if verb != "POST":
            return 405, b"JSONRPC server handles only POST requests", False
        call_id, drop = None, False
        try:
            try:
                request = json.loads(body, object_pairs_hook=_no_duplicates)
            except _DuplicateKey as dup:
                raise RpcFault(-8, f"Invalid parameter, duplicated address: {dup.key}") from None
            except ValueError:
                raise RpcFault(-32700, "Parse error") from None
            if not isinstance(request, dict):
                raise RpcFault(-32600, "Invalid Request object")
            call_id = request.get("id")
            method, params = request.get("method"), request.get("params", [])
            if not isinstance(method, str):
                raise RpcFault(-32600, "Method must be a string")
            if not isinstance(params, (list, dict)):
                raise RpcFault(-32600, "Params must be an array or object")
            if path == "/":
                raise RpcFault(-19, "Wallet file not specified (must request wallet RPC through /wallet/<filename> uri-path).")
            if path != f"/wallet/{self.wallet}":
                raise RpcFault(-18, "Requested wallet does not exist or is not loaded")
            if method not in _SPECS:
                raise RpcFault(-32601, "Method not found")
            args = check_params(_SPECS, method, params)
            self.calls.append((method, args))
            if method in self.refuse_next:
                raise RpcFault(*self.refuse_next.pop(method))
            drop = self.drop_reply.pop(method, False)
            result = getattr(self, f"_rpc_{method}")(*args)
        except RpcFault as fault:
            status = {-32600: 400, -32601: 404}.get(fault.code, 500)
            return status, _envelope(call_id, None, fault), False
        return 200, _envelope(call_id, result, None), drop

    # -- RPC methods ----------------------------------------------------------------------------
    def _outputs(self, amounts: dict[str, Any]) -> list[tuple[str, int]]:
        outputs = []
        for address, value in amounts.items():
            try:
                address_to_script(address, self.network)
            except AddressError:
                raise RpcFault(-5, f"Invalid Bitcoin address: {address}") from None
            sats = amount_from_value(value)
            if sats <= 0:
                raise RpcFault(-3, "Invalid amount for send")
            if sats < DUST_SATS:
                raise RpcFault(-4, "Transaction amount too small")
            outputs.append((address, sats))
        if not outputs:
            raise RpcFault(-8, "Transaction must have at least one recipient")
        return outputs

    def _fee_for(self, outputs: int) -> int:
        return (11 + 68 + 31 * (outputs + 1)) * FEE_RATE_SAT_VB

    def _build(self, outputs: list[tuple[str, int]], fee: int) -> tuple[bytes, tuple[str, int]]:
        """An unsigned transaction spending a new coin of the wallet's worth the spendable balance."""
        self._counter += 1
        outpoint = sha256(f"standin coin {self._counter}".encode()).digest()
        coin = (outpoint[::-1].hex(), 0)
        self.coins[coin] = self.balance_sats - self.locked_sats
        change = self.coins[coin] - sum(s for _, s in outputs) - fee
        txouts = [TxOut(sats, address_to_script(a, self.network)) for a, sats in outputs]
        txouts.append(TxOut(change, b"\x00\x14" + sha256(b"change").digest()[:20]))
        tx = Transaction(2, (TxIn(outpoint, 0, b"", 0xFFFFFFFD),), tuple(txouts), 0)
        return tx.serialize_legacy(), coin

    def _record(self, raw: bytes, outputs: list[tuple[str, int]], fee: int, comment: str,
                coin: tuple[str, int]) -> str:
        txid = sha256(sha256(raw).digest()).digest()[::-1].hex()
        self.txs.append(StandinTx(txid, outputs, fee, comment, raw, int(self.clock())))
        self.spent_by[coin] = txid
        return txid

    def _rpc_sendmany(self, dummy: str, amounts: dict, minconf: int = 1, comment: str = "",
                      subtractfeefrom: list | None = None, replaceable: bool = True, conf_target: int = 6,
                      estimate_mode: str = "unset", fee_rate: Any = None, verbose: bool = False) -> str:
        if dummy != "":
            raise RpcFault(-8, 'Dummy value must be set to ""')
        if estimate_mode.lower() not in ("unset", "economical", "conservative"):
            raise RpcFault(-8, "Invalid estimate_mode parameter, must be one of: \"unset\", \"economical\", \"conservative\"")
        outputs = self._outputs(amounts)
        fee = self._fee_for(len(outputs))
        if sum(s for _, s in outputs) + fee > self.balance_sats - self.locked_sats:
            raise RpcFault(-6, "Insufficient funds")
        raw, coin = self._build(outputs, fee)
        self.balance_sats -= sum(s for _, s in outputs) + fee
        return self._record(raw, outputs, fee, comment, coin)

    def _entry(self, tx: StandinTx, address: str, sats: int, vout: int) -> dict[str, Any]:
        return {"address": address, "category": "send", "amount": -btc(sats), "vout": vout, "fee": -btc(tx.fee),
                "abandoned": False}

    def _rpc_gettransaction(self, txid: str, include_watchonly: bool = True, verbose: bool = False) -> dict:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", txid):
            raise RpcFault(-8, f"txid must be of length 64 (not {len(txid)}, for '{txid}')")
        for tx in self.txs:
            if tx.txid == txid.lower():
                out = {"amount": -btc(sum(s for _, s in tx.outputs)), "fee": -btc(tx.fee),
                       "confirmations": tx.confirmations, "txid": tx.txid, "time": tx.time, "timereceived": tx.time,
                       "bip125-replaceable": "yes", "details": [self._entry(tx, a, s, n)
                                                                for n, (a, s) in enumerate(tx.outputs)],
                       "hex": tx.raw.hex()}
                if tx.comment:
                    out["comment"] = tx.comment
                return out
        raise RpcFault(-5, "Invalid or non-wallet transaction id")

    def _rpc_listtransactions(self, label: str = "*", count: int = 10, skip: int = 0,
                              include_watchonly: bool = True) -> list[dict]:
        if count < 0:
            raise RpcFault(-8, "Negative count")
        if skip < 0:
            raise RpcFault(-8, "Negative from")
        entries = []
        for tx in self.txs:
            for n, (address, sats) in enumerate(tx.outputs):
                entry = {**self._entry(tx, address, sats, n), "txid": tx.txid, "confirmations": tx.confirmations,
                         "time": tx.time}
                if tx.comment:
                    entry["comment"] = tx.comment
                entries.append(entry)
        end = len(entries) - skip
        return entries[max(0, end - count):max(0, end)]

    def _rpc_walletcreatefundedpsbt(self, inputs: list | None = None, outputs: Any = None, locktime: int = 0,
                                    options: dict | None = None, bip32derivs: bool = True) -> dict:
        if inputs:
            raise RpcFault(-8, "this stand-in funds PSBTs from its own coins only")
        merged: dict[str, Any] = {}
        for item in outputs if isinstance(outputs, list) else [outputs]:
            if not isinstance(item, dict):
                raise RpcFault(-8, "Invalid parameter, key-value pair must contain exactly one key")
            for address, value in item.items():
                if address in merged:
                    raise RpcFault(-8, f"Invalid parameter, duplicated address: {address}")
                merged[address] = value
        pairs = self._outputs(merged)
        fee = self._fee_for(len(pairs))
        total = sum(s for _, s in pairs)
        if total + fee > self.balance_sats - self.locked_sats:
            raise RpcFault(-4, "Insufficient funds")
        raw, coin = self._build(pairs, fee)
        if (options or {}).get("lockUnspents"):
            self.locks[coin] = total + fee
            self.locked_sats += total + fee
        self.pending_psbts[sha256(sha256(raw).digest()).digest()[::-1].hex()] = (pairs, fee, total, coin)
        psbt = b"psbt\xff" + b"\x01\x00" + _compact(len(raw)) + raw + b"\x00" + b"\x00" + b"\x00" * (len(pairs) + 1)
        return {"psbt": base64.b64encode(psbt).decode(), "fee": btc(fee), "changepos": len(pairs)}

    def _rpc_getbalance(self) -> float:
        return btc(self.balance_sats - self.locked_sats)

    def _rpc_listlockunspent(self) -> list[dict]:
        return [{"txid": txid, "vout": vout} for txid, vout in self.locks]

    def _rpc_lockunspent(self, unlock: bool, transactions: list | None = None, persistent: bool = False) -> bool:
        if transactions is None:
            if not unlock:
                raise RpcFault(-8, "Invalid parameter, expected locked output")
            for coin in list(self.locks):
                self._release(coin)
            return True
        coins = []
        for item in transactions:                     # every outpoint checked before anything changes
            if not isinstance(item, dict):
                raise RpcFault(-3, f"Expected type object, got {TYPE_NAMES.get(type(item), 'object')}")
            for key, kind in (("txid", "string"), ("vout", "number")):
                value = item.get(key)
                if not (isinstance(value, str) if kind == "string" else
                        isinstance(value, int) and not isinstance(value, bool)):
                    got = TYPE_NAMES.get(type(value), "object")
                    raise RpcFault(-3, f"Expected type {kind} for {key}, got {got}")
            txid = _parse_hash(item["txid"], "txid")
            if item["vout"] < 0:
                raise RpcFault(-8, "Invalid parameter, vout cannot be negative")
            if not any(t == txid for t, _ in self.coins):
                raise RpcFault(-8, "Invalid parameter, unknown transaction")
            coin = (txid, item["vout"])
            if coin not in self.coins:
                raise RpcFault(-8, "Invalid parameter, vout index out of bounds")
            if coin in self.spent_by:
                raise RpcFault(-8, "Invalid parameter, expected unspent output")
            if unlock and coin not in self.locks:
                raise RpcFault(-8, "Invalid parameter, expected locked output")
            if not unlock and coin in self.locks:
                raise RpcFault(-8, "Invalid parameter, output already locked")
            coins.append(coin)
        for coin in coins:
            if unlock:
                self._release(coin)
            else:
                self.locks[coin] = self.coins[coin]
                self.locked_sats += self.coins[coin]
        return True

    def _rpc_gettxout(self, txid: str, n: int, include_mempool: bool = True) -> dict | None:
        coin = (_parse_hash(txid, "txid"), n)
        if coin not in self.coins:
            return None
        spender = self.spent_by.get(coin)
        if spender is not None:
            confirmed = any(tx.txid == spender and tx.confirmations > 0 for tx in self.txs)
            if confirmed or include_mempool:
                return None
        return {"bestblock": "00" * 32, "confirmations": 1, "value": btc(self.coins[coin]),
                "scriptPubKey": {"asm": "", "hex": "0014" + sha256(b"coin").hexdigest()[:40],
                                 "type": "witness_v0_keyhash"}, "coinbase": False}


def _parse_hash(value: str, name: str) -> str:
    """Core's ParseHashV."""
    if len(value) != 64:
        raise RpcFault(-8, f"{name} must be of length 64 (not {len(value)}, for '{value}')")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise RpcFault(-8, f"{name} must be hexadecimal string (not '{value}')")
    return value.lower()


def _psbt_raw(psbt_b64: str) -> bytes:
    data = base64.b64decode(psbt_b64)
    assert data[:7] == b"psbt\xff\x01\x00", "the stand-in's own PSBT layout: unsigned tx first"
    size = data[7]
    return data[8:8 + size] if size < 0xFD else data[10:10 + int.from_bytes(data[8:10], "little")]


def _compact(n: int) -> bytes:
    return bytes([n]) if n < 0xFD else b"\xfd" + n.to_bytes(2, "little")


def _envelope(call_id: Any, result: Any, fault: RpcFault | None) -> bytes:
    error = None if fault is None else {"code": fault.code, "message": fault.message}
    return (json.dumps({"result": result, "error": error, "id": call_id}) + "\n").encode()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("not an HTTP request")
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n"):
        if not line:
            return None
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return parts[0], parts[1], headers, body
