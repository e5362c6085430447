"""A JSON-RPC client for Bitcoin Core over asyncio streams: HTTP/1.1 keep-alive, basic auth, timeouts.

Nothing here blocks the event loop: sockets are asyncio streams, the cookie file is read in a thread, and a
large reply (a full getblocktemplate is several MB of hex) is parsed in a thread.

Errors are named so callers can tell "the node said no" from "we could not talk to the node":
- `RpcError(code, message)`: Core answered with its error object (e.g. -5 "Block not found");
- `NodeUnreachable`: connect/read/write failed, bad HTTP, or a reply that is not JSON-RPC;
  `RpcTimeout` and `NodeAuthFailed` are kinds of it.
Credentials never appear in `name`, in log lines or in exception messages.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger("kzpool.node_rpc")

DEFAULT_PORT = 8332
MAX_REPLY_BYTES = 64 * 1024 * 1024     # a 4 MWU block template is < 10 MB of JSON; more is a broken peer
MAX_IDLE_CONNECTIONS = 4               # long poll + tip poll + submit + block_status run at once
PARSE_IN_THREAD_BYTES = 256 * 1024     # json.loads of a few MB takes tens of ms: keep it off the loop


class NodeError(Exception):
    """Base of every failure talking to a node."""


class RpcError(NodeError):
    """Core answered with an error object."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NodeUnreachable(NodeError):
    """No usable answer: connection refused/reset, HTTP error, or a malformed reply."""


class RpcTimeout(NodeUnreachable):
    """The call did not finish within its timeout."""


class NodeAuthFailed(NodeUnreachable):
    """HTTP 401 even after re-reading the cookie file."""


class _ClosedBeforeReply(ConnectionError):
    """The server closed a reused keep-alive connection before answering: safe to retry once."""


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


@dataclass
class RpcStats:
    """Per-client call latencies and errors, drained by the metrics collector at each scrape."""
    errors: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))   # (method, error)
    latencies: list[tuple[str, float]] = field(default_factory=list)
    max_kept: int = 10_000           # a scrape that never comes must not grow this without bound

    def observe(self, method: str, seconds: float) -> None:
        if len(self.latencies) < self.max_kept:
            self.latencies.append((method, seconds))


class RpcClient:
    """One Bitcoin Core node. Concurrent calls each get their own keep-alive connection."""

    def __init__(self, url: str, *, cookie_file: str | Path | None = None, user: str | None = None,
                 password: str | None = None, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("node rpc url must look like http://host:port (Core speaks plain HTTP)")
        self.host = parts.hostname
        self.port = parts.port or DEFAULT_PORT
        self.path = parts.path or "/"
        self.name = f"{self.host}:{self.port}{'' if self.path == '/' else self.path}"
        self.timeout_s = timeout_s
        self.stats = RpcStats()
        # Precedence: explicit user/password, then credentials in the URL, then the cookie file.
        if user is None and parts.username is not None:
            user, password = unquote(parts.username), unquote(parts.password or "")
        self._cookie_file = Path(cookie_file) if cookie_file and user is None else None
        self._auth = _basic(f"{user}:{password or ''}") if user is not None else None
        self._idle: list[_Conn] = []
        self._next_id = 0
        self._closed = False

    async def call(self, method: str, *params: Any, timeout_s: float | None = None) -> Any:
        """Call `method` with positional params; return `result` or raise a NodeError."""
        started = time.perf_counter()
        try:
            result = await self._call(method, *params, timeout_s=timeout_s)
        except NodeError as exc:
            self.stats.errors[(method, type(exc).__name__)] += 1
            raise
        # A long poll waits for the next block by design: its duration is not the node's latency.
        if timeout_s is None or timeout_s <= self.timeout_s:
            self.stats.observe(method, time.perf_counter() - started)
        return result

    async def _call(self, method: str, *params: Any, timeout_s: float | None = None) -> Any:
        if self._closed:
            raise NodeUnreachable(f"{self.name}: client closed")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        self._next_id += 1
        call_id = self._next_id
        body = json.dumps({"jsonrpc": "1.0", "id": call_id, "method": method,
                           "params": list(params)}).encode()
        try:
            async with asyncio.timeout(timeout):
                if self._auth is None:
                    await self._load_cookie()
                status, payload = await self._post(body)
                if status == 401 and self._cookie_file is not None:
                    await self._load_cookie()     # Core writes a new cookie each time it starts
                    status, payload = await self._post(body)
        except TimeoutError:
            raise RpcTimeout(f"{self.name}: {method} timed out after {timeout:g}s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise NodeUnreachable(f"{self.name}: {method}: {type(exc).__name__}: {exc}") from None
        if status == 401:
            raise NodeAuthFailed(f"{self.name}: HTTP 401, check rpcuser/rpcpassword or the cookie file")
        return await self._decode(method, call_id, status, payload)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def _load_cookie(self) -> None:
        if self._cookie_file is None:
            raise NodeAuthFailed(f"{self.name}: no rpc credentials and no cookie file configured")
        try:
            text = await asyncio.to_thread(self._cookie_file.read_text)
        except OSError as exc:
            raise NodeAuthFailed(f"{self.name}: cannot read cookie file: {exc.strerror}") from None
        self._auth = _basic(text.strip())

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        request = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                   f"Authorization: Basic {self._auth}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\nUser-Agent: kzpool\r\n\r\n").encode() + body
        conn = None
        while self._idle and conn is None:
            conn = self._idle.pop()
            if conn.reader.at_eof():      # the server already closed it
                conn.close()
                conn = None
        if conn is not None:
            try:
                return await self._exchange(conn, request)
            except _ClosedBeforeReply:
                pass   # Core drops idle keep-alive connections (rpcservertimeout): use a fresh one
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            return await self._exchange(_Conn(reader, writer), request)
        except _ClosedBeforeReply as exc:
            raise ConnectionResetError("connection closed before a reply") from exc

    async def _exchange(self, conn: _Conn, request: bytes) -> tuple[int, bytes]:
        try:
            try:
                conn.writer.write(request)
                await conn.writer.drain()
            except ConnectionError as exc:
                raise _ClosedBeforeReply() from exc     # nothing was read: as safe to retry as EOF
            status, keep_alive, payload = await _read_response(conn.reader)
        except BaseException:
            conn.close()   # a half-read reply poisons the connection; cancellation included
            raise
        if keep_alive and not self._closed and len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(conn)
        else:
            conn.close()
        return status, payload

    async def _decode(self, method: str, call_id: int, status: int, payload: bytes) -> Any:
        try:
            if len(payload) > PARSE_IN_THREAD_BYTES:
                reply = await asyncio.to_thread(json.loads, payload)
            else:
                reply = json.loads(payload)
        except ValueError:
            raise NodeUnreachable(f"{self.name}: {method}: HTTP {status}, reply is not JSON") from None
        if not isinstance(reply, dict) or reply.get("id") != call_id:
            raise NodeUnreachable(f"{self.name}: {method}: HTTP {status}, not a JSON-RPC reply to our id")
        error = reply.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise NodeUnreachable(f"{self.name}: {method}: malformed error object")
            raise RpcError(int(error.get("code", 0)), str(error.get("message", "")))
        if status != 200:
            raise NodeUnreachable(f"{self.name}: {method}: HTTP {status}")
        return reply.get("result")


def _basic(credentials: str) -> str:
    return base64.b64encode(credentials.encode()).decode("ascii")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """Status, keep-alive, body of one HTTP/1.1 response (Content-Length, chunked, or until EOF)."""
    status_line = await reader.readline()
    if not status_line:
        raise _ClosedBeforeReply()
    parts = status_line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"bad HTTP status line {status_line[:40]!r}")
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n"):
        if not line:
            raise ConnectionResetError("connection closed inside the HTTP headers")
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    keep_alive = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if not 0 <= length <= MAX_REPLY_BYTES:
            raise ValueError(f"reply of {length} bytes is over the {MAX_REPLY_BYTES} byte limit")
        body = await reader.readexactly(length)
    else:
        body = await reader.read(MAX_REPLY_BYTES + 1)
        keep_alive = False
    if len(body) > MAX_REPLY_BYTES:
        raise ValueError(f"reply over the {MAX_REPLY_BYTES} byte limit")
    return int(parts[1]), keep_alive, body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"x", 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass   # trailers
            return b"".join(chunks)
        total += size
        if total > MAX_REPLY_BYTES:
            raise ValueError(f"reply over the {MAX_REPLY_BYTES} byte limit")
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
