"""A Bitcoin Core stand-in for tests: a real HTTP/1.1 JSON-RPC server on 127.0.0.1, ephemeral port.

It checks what it receives as strictly as Core (stricter in two places, marked): POST only, HTTP basic auth
against rpcuser/rpcpassword or the `__cookie__` file it rewrites on every start (401 with an empty body
otherwise), a JSON-RPC 1.0 envelope, positional or named params with Core's type errors, and Core's HTTP
status per error (400 invalid request, 404 method not found, 500 other errors). Error objects have Core's
shape: {"result": null, "error": {"code": -32601, "message": "Method not found"}, "id": ...}.

Methods: getblocktemplate (rules must include segwit; longpollid waits until the tip or the mempool
changes), getbestblockhash, getblockheader, getblockhash, getblockchaininfo, submitblock (validated by
standin_chain).
`stop()`/`start()` take the node down and up on the same port; `stall` makes it accept requests and never
answer; `hold_longpolls` keeps long polls waiting; `zmq_pub=True` publishes `hashblock` on a ZMQ PUB
socket like `-zmqpubhashblock` (needs pyzmq). Two stand-ins given one `Chain` are two nodes in sync.
Import it as `from bitcoind_standin import BitcoindStandin` (pyproject puts tests/ on pytest's path).
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import struct
from pathlib import Path
from typing import Any, Callable

from core_rpc_params import TYPE_NAMES, RpcFault, Specs, check_params
from standin_chain import BlockDecodeError, Chain, dsha256, real_mainnet_txs

# One factor scales every bounded wait in the node tests, for slow CI machines.
TIMEOUT_FACTOR = float(os.environ.get("KZPOOL_TEST_TIMEOUT_FACTOR", "1"))


def wait_s(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR


# name -> [(argument, type, required)], as in Core's RPC help.
_SPECS: Specs = {
    "getblocktemplate": [("template_request", dict, False)],
    "getbestblockhash": [],
    "getblockheader": [("blockhash", str, True), ("verbose", bool, False)],
    "getblockhash": [("height", int, True)],
    "getblockchaininfo": [],
    "submitblock": [("hexdata", str, True), ("dummy", str, False)],
}
_STATUS_TEXT = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
                405: "Method Not Allowed", 500: "Internal Server Error"}


class BitcoindStandin:
    def __init__(self, *, user: str | None = "kzpool", password: str = "standin-password",
                 cookie_dir: Path | None = None, chain: Chain | None = None, zmq_pub: bool = False) -> None:
        self.user, self.password = user, password
        self.cookie_file = cookie_dir / ".cookie" if cookie_dir else None
        self._cookie = ""
        self.chain = chain or Chain(real_mainnet_txs())
        self.port = 0
        self.stall = False
        self.hold_longpolls = False     # long polls never answer: only ZMQ or polling can see a tip
        self.calls: list[tuple[str, Any]] = []          # (method, params) in arrival order
        self.submitted: list[tuple[str, str | None]] = []   # (block hash, result)
        self.auth_failures = 0
        self.connections = 0                              # TCP connections accepted
        self.on_tip: list[Callable[[str], None]] = []     # hooks (the benchmark timestamps tips)
        self._changed = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._zmq_wanted = zmq_pub
        self._zmq_sock: Any = None
        self._zmq_seq = 0
        self.zmq_endpoint: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.cookie_file is not None:          # like Core: a fresh cookie on every start
            self._cookie = f"__cookie__:{secrets.token_hex(32)}"
            self.cookie_file.write_text(self._cookie)
        if self._zmq_wanted and self._zmq_sock is None:
            import zmq                              # optional: only the ZMQ tests and bench need it
            self._zmq_sock = zmq.Context.instance().socket(zmq.PUB)
            self.zmq_endpoint = f"tcp://127.0.0.1:{self._zmq_sock.bind_to_random_port('tcp://127.0.0.1')}"

    async def stop(self) -> None:
        """Node down: stop listening and drop every open connection (long polls included)."""
        if self._server is None:
            return
        self._server.close()
        self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.cookie_file is not None:
            self.cookie_file.unlink(missing_ok=True)

    async def close(self) -> None:
        await self.stop()
        if self._zmq_sock is not None:
            self._zmq_sock.close(linger=0)
            self._zmq_sock = None

    # Chain events --------------------------------------------------------------------------------
    def mine(self, n: int = 1, parent: str | None = None) -> list[str]:
        """Blocks found by someone else; wakes long polls and publishes hashblock."""
        hashes = []
        for _ in range(n):
            hashes.append(self.chain.mine(parent))
            parent = hashes[-1] if parent else None
        self._wake(tip_changed=True)
        return hashes

    def set_mempool(self, txs: list) -> None:
        self.chain.set_mempool(txs)
        self._wake(tip_changed=False)

    def _wake(self, tip_changed: bool) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        if tip_changed:
            for hook in self.on_tip:
                hook(self.chain.tip.hash)
            if self._zmq_sock is not None:
                import zmq
                # Core sends the hash bytes in display order, then a little-endian sequence number.
                self._zmq_sock.send_multipart([b"hashblock", bytes.fromhex(self.chain.tip.hash),
                                               struct.pack("<I", self._zmq_seq)], flags=zmq.NOBLOCK)
                self._zmq_seq += 1

    # HTTP ----------------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while (request := await _read_request(reader)) is not None:
                if self.stall:
                    await asyncio.Event().wait()      # accepted, never answered: a hung node
                status, headers, body = await self._respond(*request)
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                writer.write(f"HTTP/1.1 {status} {_STATUS_TEXT[status]}\r\n{head}"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:
            pass   # stop() cancels us; returning normally keeps 3.11's stream callback from logging it
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _respond(self, verb: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        if not self._authorized(headers.get("authorization", "")):
            self.auth_failures += 1
            return 401, {"WWW-Authenticate": 'Basic realm="jsonrpc"'}, b""
        if verb != "POST":
            return 405, {}, b"JSONRPC server handles only POST requests"
        try:
            request = json.loads(body)
        except ValueError:
            body = json.dumps(_envelope(None, None, RpcFault(-32700, "Parse error"))) + "\n"
            return 500, {"Content-Type": "application/json"}, body.encode()
        if isinstance(request, list):        # batch: always 200, one reply object per request
            replies = [await self._one(r) for r in request]
            return 200, {"Content-Type": "application/json"}, (json.dumps([r[1] for r in replies]) + "\n").encode()
        status, reply = await self._one(request)
        return status, {"Content-Type": "application/json"}, (json.dumps(reply) + "\n").encode()

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        try:
            given = base64.b64decode(token, validate=True).decode()
        except ValueError:
            return False
        accepted = {self._cookie} if self._cookie else set()
        if self.user is not None:
            accepted.add(f"{self.user}:{self.password}")
        return scheme == "Basic" and given in accepted

    async def _one(self, request: Any) -> tuple[int, dict]:
        call_id = request.get("id") if isinstance(request, dict) else None
        try:
            if not isinstance(request, dict):
                raise RpcFault(-32600, "Invalid Request object")
            if request.get("jsonrpc", "1.0") not in ("1.0", "1.1"):
                raise RpcFault(-32600, "JSON-RPC version not supported")      # this client speaks 1.0
            if "id" not in request:
                raise RpcFault(-32600, "Missing id")      # stricter than Core: our client always sends one
            method = request.get("method")
            if not isinstance(method, str):
                raise RpcFault(-32600, "Method must be a string")
            params = request.get("params", [])
            if not isinstance(params, (list, dict)):
                raise RpcFault(-32600, "Params must be an array or object")
            if method not in _SPECS:
                raise RpcFault(-32601, "Method not found")
            args = check_params(_SPECS, method, params)
            self.calls.append((method, args))
            result = await getattr(self, f"_rpc_{method}")(*args)
        except RpcFault as fault:
            return _status_for(fault.code), _envelope(call_id, None, fault)
        return 200, _envelope(call_id, result, None)

    # RPC methods ---------------------------------------------------------------------------------
    async def _rpc_getblocktemplate(self, req: dict | None = None) -> dict:
        req = req or {}
        rules = req.get("rules")
        if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules) or "segwit" not in rules:
            raise RpcFault(-8, 'getblocktemplate must be called with the segwit rule set '
                               '(call with {"rules": ["segwit"]})')
        if req.get("mode", "template") != "template":
            raise RpcFault(-8, "Invalid mode")
        longpollid = req.get("longpollid")
        if longpollid is not None and not isinstance(longpollid, str):
            raise RpcFault(-3, "JSON value of type %s is not of expected type string"
                           % TYPE_NAMES.get(type(longpollid), "object"))   # stricter than Core
        while longpollid is not None and (longpollid == self.chain.longpollid or self.hold_longpolls):
            await self._changed.wait()
        return self.chain.template()

    async def _rpc_getbestblockhash(self) -> str:
        return self.chain.tip.hash

    async def _rpc_getblockheader(self, blockhash: str, verbose: bool = True) -> dict | str:
        if len(blockhash) != 64:
            raise RpcFault(-8, f"blockhash must be of length 64 (not {len(blockhash)}, for '{blockhash}')")
        try:
            bytes.fromhex(blockhash)
        except ValueError:
            raise RpcFault(-8, f"blockhash must be hexadecimal string (not '{blockhash}')") from None
        info = self.chain.header_json(blockhash.lower())
        if info is None:
            raise RpcFault(-5, "Block not found")
        return info if verbose else self.chain.blocks[blockhash.lower()].header.hex()

    async def _rpc_getblockhash(self, height: int) -> str:
        block_hash = self.chain.active_hash_at(height)
        if block_hash is None:
            raise RpcFault(-8, "Block height out of range")
        return block_hash

    async def _rpc_getblockchaininfo(self) -> dict:
        return self.chain.chain_info()

    async def _rpc_submitblock(self, hexdata: str, dummy: str = "") -> str | None:
        try:
            raw = bytes.fromhex(hexdata)
            tip_before = self.chain.tip.hash
            result = self.chain.submit(raw)
        except (ValueError, BlockDecodeError) as exc:
            raise RpcFault(-22, str(exc) if isinstance(exc, BlockDecodeError) else "Block decode failed") from None
        self.submitted.append((dsha256(raw[:80])[::-1].hex(), result))
        if self.chain.tip.hash != tip_before:
            self._wake(tip_changed=True)
        return result


def _status_for(code: int) -> int:
    return {-32600: 400, -32601: 404}.get(code, 500)


def _envelope(call_id: Any, result: Any, fault: RpcFault | None) -> dict:
    error = None if fault is None else {"code": fault.code, "message": fault.message}
    return {"result": result, "error": error, "id": call_id}


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    verb, _, rest = line.decode("latin-1").partition(" ")
    if not rest.rstrip().endswith(("HTTP/1.1", "HTTP/1.0")):
        raise ValueError("not an HTTP request")
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n"):
        if not line:
            return None
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return verb, headers, body
