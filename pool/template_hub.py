"""One template source shared by the worker processes of `kzpool run --workers N`.

The supervisor owns the real `TemplateSource` (simnet or the Bitcoin Core nodes) and a `TemplateHub`
on a Unix socket in a private directory; each worker's `RelayedTemplateSource` connects to it. Down
the socket go templates (every worker builds its own jobs from them, with its own extranonce1
prefix); up go found blocks, which the hub submits through the real source and answers with each
node's outcome. One process talks to the nodes, however many workers serve miners.

Frames are a 4-byte big-endian length and a pickle. Pickle is safe here only because both ends are
this program and the socket lives in a 0700 directory only this user can enter.
"""
from __future__ import annotations

import asyncio
import logging
import pickle
import struct
from itertools import count
from typing import Any, AsyncIterator

from .template import BlockTemplate, SubmitOutcome, TemplateSource

log = logging.getLogger("kzpool.hub")

MAX_FRAME = 64 * 1024 * 1024     # a 4 MB block as hex-free bytes, or a 3000-transaction template, fits


async def read_frame(reader: asyncio.StreamReader) -> Any:
    size = struct.unpack(">I", await reader.readexactly(4))[0]
    if size > MAX_FRAME:
        raise ConnectionError(f"hub frame of {size} bytes exceeds {MAX_FRAME}")
    return pickle.loads(await reader.readexactly(size))


def frame(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack(">I", len(body)) + body


class TemplateHub:
    """Supervisor side: relays the real source's templates to every worker and their blocks back."""

    def __init__(self, source: TemplateSource, socket_path: str) -> None:
        self.source = source
        self.socket_path = socket_path
        self.current: BlockTemplate | None = None
        self.workers: dict[int, asyncio.StreamWriter] = {}
        self.metrics_ports: dict[int, int] = {}        # worker index -> its loopback /metrics port
        self._server: asyncio.AbstractServer | None = None
        self._feed: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, self.socket_path)
        self._feed = asyncio.create_task(self._relay_templates(), name="hub-templates")

    async def _relay_templates(self) -> None:
        while True:
            try:
                async for template in self.source.templates():
                    self.current = template
                    data = frame(("template", template))
                    for writer in list(self.workers.values()):
                        writer.write(data)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("hub_template_source_failed source=%s", self.source.name)
                await asyncio.sleep(1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = -1
        try:
            kind, index, metrics_port = await read_frame(reader)
            if kind != "hello":
                raise ConnectionError("a worker must say hello first")
            self.workers[index] = writer
            self.metrics_ports[index] = metrics_port
            log.info("hub_worker_joined worker=%d metrics_port=%d", index, metrics_port)
            if self.current is not None:
                writer.write(frame(("template", self.current)))
            while True:
                kind, request_id, argument = await read_frame(reader)
                if kind == "submit":
                    asyncio.create_task(self._submit(writer, request_id, argument))
                elif kind == "confirmations":
                    asyncio.create_task(self._confirmations(writer, request_id, argument))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if self.workers.get(index) is writer:
                del self.workers[index]
                self.metrics_ports.pop(index, None)
                log.info("hub_worker_left worker=%d", index)
            writer.close()

    async def _submit(self, writer: asyncio.StreamWriter, request_id: int, block: bytes) -> None:
        try:
            outcomes = await self.source.submit_block(block)
        except Exception as exc:
            log.exception("hub_submit_failed")
            outcomes = [SubmitOutcome(self.source.name, None, error=str(exc))]
        writer.write(frame(("submitted", request_id, outcomes)))

    async def _confirmations(self, writer: asyncio.StreamWriter, request_id: int, block_hash: str) -> None:
        answer: int | None | dict[str, str]
        try:
            answer = await self.source.confirmations(block_hash)      # type: ignore[attr-defined]
        except Exception as exc:
            # Not "None": None means the chain never accepted the block, and that reverses credits.
            log.exception("hub_confirmations_failed")
            answer = {"error": type(exc).__name__}
        writer.write(frame(("answer", request_id, answer)))

    async def close(self) -> None:
        if self._feed:
            self._feed.cancel()
        if self._server:
            self._server.close()
        for writer in list(self.workers.values()):
            writer.close()
        await self.source.close()


class RelayedTemplateSource:
    """Worker side: a `TemplateSource` whose templates and block submissions go through the hub."""

    def __init__(self, socket_path: str, worker_index: int, metrics_port: int = 0) -> None:
        self.name = "hub"
        self.socket_path = socket_path
        self.worker_index = worker_index
        self.metrics_port = metrics_port
        self._templates: asyncio.Queue[BlockTemplate] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def connect(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(self.socket_path, limit=MAX_FRAME)
        self._writer.write(frame(("hello", self.worker_index, self.metrics_port)))
        self._reader_task = asyncio.create_task(self._read(reader), name="hub-reader")
        self._connected.set()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await read_frame(reader)
                if message[0] == "template":
                    self._templates.put_nowait(message[1])
                elif message[0] in ("submitted", "answer"):
                    future = self._pending.pop(message[1], None)
                    if future is not None and not future.done():
                        future.set_result(message[2])
        except (asyncio.IncompleteReadError, ConnectionError):
            log.error("hub_connection_lost worker=%d", self.worker_index)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("supervisor connection lost"))

    async def templates(self) -> AsyncIterator[BlockTemplate]:
        if not self._connected.is_set():
            await self.connect()
        while True:
            yield await self._templates.get()

    async def _ask(self, kind: str, argument: Any) -> Any:
        if self._writer is None:
            raise ConnectionError("not connected to the supervisor")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._writer.write(frame((kind, request_id, argument)))
        return await future

    async def submit_block(self, block: bytes) -> list[SubmitOutcome]:
        try:
            return await self._ask("submit", block)
        except ConnectionError as exc:
            return [SubmitOutcome("hub", None, error=str(exc))]

    async def confirmations(self, block_hash: str) -> int | None:
        """The real source's answer, through the supervisor (payout maturity in worker 0)."""
        answer = await self._ask("confirmations", block_hash)
        if isinstance(answer, dict):
            raise ConnectionError(f"the supervisor's source failed: {answer.get('error')}")
        return answer

    async def close(self) -> None:
        if self._reader_task:
            self._reader_task.cancel()
        if self._writer:
            self._writer.close()
