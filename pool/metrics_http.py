"""A small HTTP/1.1 server on the pool's event loop, for /metrics (and the admin endpoint's /status).

No threads: prometheus_client's own server runs in a thread that would read pool state while the loop
changes it. Here a scrape runs between two event-loop turns, so it sees a consistent pool. Requests
are GET or HEAD with no body; headers are capped at `MAX_HEADER_BYTES`, a slow client at
`READ_TIMEOUT_S`, an idle keep-alive connection at `IDLE_TIMEOUT_S`.
"""
from __future__ import annotations

import asyncio
import gzip
import logging
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from .app import PoolApp

log = logging.getLogger("kzpool.http")

MAX_HEADER_BYTES = 8 * 1024      # a scrape request is a few hundred bytes
READ_TIMEOUT_S = 10.0            # a request that takes longer to arrive is a stuck or hostile client
IDLE_TIMEOUT_S = 60.0            # Prometheus keeps its connection open between scrapes (15 s default)
GZIP_MIN_BYTES = 1024
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error"}


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    peer: tuple[str, int]


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class HttpServer:
    """The listening socket and its open connections; `close()` ends both (asyncio.Server.close leaves
    keep-alive connections open, and Prometheus would go on scraping through them)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return self.server.sockets if self.server else ()

    @property
    def port(self) -> int:
        return self.sockets[0].getsockname()[1] if self.sockets else 0

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.close()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()


async def start_http_server(routes: dict[str, Handler], host: str, port: int, name: str,
                            allow_peer: Callable[[str], bool] = lambda _host: True) -> HttpServer:
    """Serves `routes` (exact paths, query strings ignored); `allow_peer` can refuse a client address."""
    http = HttpServer()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        http.writers.add(writer)
        try:
            await _serve_connection(reader, writer, routes, (str(peer[0]), int(peer[1])), allow_peer, name)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass    # the loop is shutting down; the connection task ends here either way
        finally:
            http.writers.discard(writer)
            writer.close()

    http.server = await asyncio.start_server(serve, host, port, limit=MAX_HEADER_BYTES, reuse_address=True)
    log.info("http_listening name=%s host=%s port=%d paths=%s", name, host, http.port, ",".join(routes))
    return http


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            routes: dict[str, Handler], peer: tuple[str, int],
                            allow_peer: Callable[[str], bool], name: str) -> None:
    first = True
    while True:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                          READ_TIMEOUT_S if first else IDLE_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            await _write(writer, HttpResponse(431, b"request headers too large\n"), "GET", close=True)
            return
        first = False
        request = _parse(head, peer)
        if request is None:
            await _write(writer, HttpResponse(400, b"bad request\n"), "GET", close=True)
            return
        keep_alive = request.headers.get("connection", "").lower() != "close"
        response = await _respond(request, routes, allow_peer, name)
        await _write(writer, response, request.method, close=not keep_alive,
                     gzip_ok="gzip" in request.headers.get("accept-encoding", ""))
        if not keep_alive:
            return


async def _respond(request: HttpRequest, routes: dict[str, Handler], allow_peer: Callable[[str], bool],
                   name: str) -> HttpResponse:
    if not allow_peer(request.peer[0]):
        return HttpResponse(403, b"forbidden\n")
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(405, b"only GET and HEAD\n", headers={"Allow": "GET, HEAD"})
    handler = routes.get(request.path)
    if handler is None:
        return HttpResponse(404, b"not found; try " + ", ".join(routes).encode() + b"\n")
    try:
        return await handler(request)
    except Exception:
        log.exception("http_handler_failed name=%s path=%s", name, request.path)
        return HttpResponse(500, b"internal error\n")


def _parse(head: bytes, peer: tuple[str, int]) -> HttpRequest | None:
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, proto = lines[0].split(" ")
    except ValueError:
        return None
    if not proto.startswith("HTTP/1.") or not target.startswith("/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            return None
        headers[key.strip().lower()] = value.strip()
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        return None          # no endpoint takes a body; refusing one keeps the framing trivial
    return HttpRequest(method, target.split("?", 1)[0], headers, peer)


async def _write(writer: asyncio.StreamWriter, response: HttpResponse, method: str, close: bool,
                 gzip_ok: bool = False) -> None:
    body = response.body
    headers = {"Content-Type": response.content_type, **response.headers}
    if gzip_ok and len(body) >= GZIP_MIN_BYTES:
        body = gzip.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    headers["Content-Length"] = str(len(body))
    headers["Connection"] = "close" if close else "keep-alive"
    head = f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
    await writer.drain()


async def start_metrics_server(app: "PoolApp", host: str, port: int) -> HttpServer:
    """Serves GET /metrics in the Prometheus text format from the app's metrics registry."""
    from .metrics import metrics_for
    registry = metrics_for(app).registry

    async def metrics(_request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    async def index(_request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, b"kzpool metrics: /metrics\n")

    return await start_http_server({"/metrics": metrics, "/": index}, host, port, "metrics")


def bound_port(server: HttpServer) -> int:
    return server.port
