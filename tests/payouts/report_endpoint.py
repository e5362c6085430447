"""A stand-in for the revenue bodies' report API: HTTPS on 127.0.0.1 with a self-signed
certificate made by the openssl command (the client trusts it through `ca_file`), answering each
POST with the next scripted status and recording what it received."""
from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

from ci_required import unavailable

from wallet_standin import _read_request


def make_certificate(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        unavailable("the openssl command is needed to make the test certificate (apt-get install openssl)",
                    "the report submitter's HTTPS tests")
    cert, key = directory / "endpoint.pem", directory / "endpoint.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class ReportEndpoint:
    def __init__(self, directory: Path) -> None:
        self.cert, self.key = make_certificate(directory)
        self.script: list[int] = []            # statuses to answer, in order; then 200
        self.received: list[tuple[dict[str, str], Any]] = []
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/api/v1/mining-pool/distributions"

    async def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_request(reader)
            if request is None:
                return
            _, _, headers, body = request
            self.received.append((headers, json.loads(body)))
            status = self.script.pop(0) if self.script else 200
            answer = json.dumps({"accepted": status == 200, "receipt": f"R-{len(self.received)}"}).encode()
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(answer)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + answer)
            await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
