"""The asyncio HTTP endpoint over real sockets: routes, methods, keep-alive, gzip, hostile requests, close."""
from __future__ import annotations

import asyncio
import gzip

import pytest

from ops_pool import http_get, wait_s
from pool.metrics_http import MAX_HEADER_BYTES, HttpRequest, HttpResponse, HttpServer, start_http_server


async def hello(_request: HttpRequest) -> HttpResponse:
    return HttpResponse(200, b"hello\n" * 500)


async def broken(_request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a bug in a handler")


@pytest.fixture
async def server():
    srv = await start_http_server({"/hello": hello, "/broken": broken}, "127.0.0.1", 0, "test")
    yield srv
    srv.close()
    await srv.wait_closed()


async def exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), wait_s(5))
    writer.close()
    return data


async def test_routes_methods_and_errors(server: HttpServer):
    status, headers, body = await http_get(server.port, "/hello?x=1")
    assert status == 200 and body == b"hello\n" * 500 and headers["content-length"] == str(len(body))
    assert (await http_get(server.port, "/nowhere"))[0] == 404
    assert (await http_get(server.port, "/broken"))[0] == 500
    assert (await exchange(server.port, b"POST /hello HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")).startswith(
        b"HTTP/1.1 405 ")
    head = await exchange(server.port, b"HEAD /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")     # headers, no body
    assert (await exchange(server.port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    assert (await exchange(server.port, b"GET /hello HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")).startswith(
        b"HTTP/1.1 400 ")
    huge = b"GET /hello HTTP/1.1\r\nX-Pad: " + b"a" * (2 * MAX_HEADER_BYTES) + b"\r\n\r\n"
    assert (await exchange(server.port, huge)).startswith(b"HTTP/1.1 431 ")


async def test_gzip_when_asked(server: HttpServer):
    status, headers, body = await http_get(server.port, "/hello", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == b"hello\n" * 500


async def test_keep_alive_then_close_ends_open_connections(server: HttpServer):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for _ in range(3):          # three requests on one connection, as Prometheus does between scrapes
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Connection: keep-alive" in head
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    server.close()              # the open keep-alive connection ends too, not only the listener
    assert await asyncio.wait_for(reader.read(), wait_s(5)) == b""
    writer.close()


async def test_refused_peer_gets_403():
    srv = await start_http_server({"/hello": hello}, "127.0.0.1", 0, "test", allow_peer=lambda host: False)
    try:
        assert (await http_get(srv.port, "/hello"))[0] == 403
    finally:
        srv.close()
