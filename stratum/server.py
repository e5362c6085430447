"""The asyncio shell around `Session`: sockets, timers, batching. The only I/O module in `stratum/`.

- Each connection is an `asyncio.Protocol` (no per-connection reader task: cheap at 100k sessions).
- A broadcast serialises `mining.notify` once and writes it to every session without awaiting any;
  a miner that stops reading is dropped after `send_stall_timeout_s`, never waited for.
- Submissions that arrive in one event-loop turn are hashed in one `hash_batch` call; a lone share
  is hashed on the next turn, so light load adds no latency.
- A turn's accepted shares go to the `ShareSink` in one call; their `true` replies wait until it
  says they are durable.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import count
from typing import Callable, Collection

from .errors import ErrorCode
from .difficulty import difficulty_for_target
from .extranonce import Extranonce1Allocator, ExtranonceExhausted
from .interfaces import AcceptedShare, Account, Authorizer, Peer, Refusal, ShareHasher, ShareSink
from .jobbook import JobBook
from .jobs import Job, ShareResult
from .messages import encode_notification
from .session import (AuthorizeRequest, Close, DifficultyChanged, Event, Send, Session, SessionConfig,
                      ShareRejected, State)
from .submit import SubmitCheck

log = logging.getLogger("kzpool.stratum")


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    session: SessionConfig              # start/min difficulty are per port (CPU miners vs ASICs)
    tls_cert: str | None = None         # stratum+ssl when both are set
    tls_key: str | None = None
    reuse_port: bool = False            # SO_REUSEPORT: worker processes share the port, the kernel spreads connections


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_sessions: int = 100_000             # connections beyond this are closed on accept
    idle_timeout_s: float = 600.0           # no bytes from a miner for this long: close
    send_stall_timeout_s: float = 30.0      # a miner whose socket buffer stays full this long: drop
    write_high_water_bytes: int = 256 * 1024
    soft_limit_pause_s: float = 1.0         # a session over its soft cost limit is not read for this long
    sweep_interval_s: float = 5.0           # how often timers (idle, stall, vardiff decline) are checked
    shutdown_timeout_s: float = 10.0        # how long shutdown waits for replies to drain
    reconnect_wait_s: int = 5               # `client.reconnect` wait hint sent on shutdown
    # Overload back-pressure: with this many shares queued or awaiting storage, sessions that
    # deliver data stop being read (their miners' sends back up in TCP) until half have drained.
    max_shares_in_flight: int = 20_000


@dataclass
class ServerStats:
    """Counters read by the metrics exporter; stratum/ stays free of prometheus."""
    shares: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))   # (result, reason)
    accepted_difficulty: float = 0.0
    blocks_found: int = 0
    connections_opened: int = 0
    connections_closed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_fanout_s: float = 0.0
    authorize_refused: dict[str, int] = field(default_factory=lambda: defaultdict(int))   # by reason
    submit_latencies: list[float] = field(default_factory=list)   # drained by the exporter
    shares_in_flight: int = 0            # queued for hashing or awaiting storage
    read_pauses: int = 0                 # sessions paused by the overload back-pressure


class StratumServer:
    def __init__(self, listeners: list[Listener], limits: ServerLimits, authorizer: Authorizer,
                 hasher: ShareHasher, sink: ShareSink, extranonces: Extranonce1Allocator,
                 jobs: JobBook | None = None,
                 still_authorized: Callable[[Account], bool] | None = None,
                 gets_work: Callable[[Account], bool] | None = None) -> None:
        self.listeners = listeners
        self.limits = limits
        self.authorizer = authorizer
        self.hasher = hasher
        self.sink = sink
        self.extranonces = extranonces
        self.jobs = jobs if jobs is not None else JobBook()
        # Both answer per login (the server asks once per login per batch or broadcast).
        # Asked at every submit: a licence revoked after authorization stops counting shares at once.
        self.still_authorized = still_authorized
        # Asked at every broadcast: a curtailed miner gets no further jobs during its grace period.
        self.gets_work = gets_work
        self.stats = ServerStats()
        self.connections: dict[int, "Connection"] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._ids = count(1)
        self._batch: list[tuple["Connection", SubmitCheck, float]] = []
        self._batch_scheduled = False
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: set[Connection] = set()     # not read until the backlog drains
        self.closing = False

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for lst in self.listeners:
            tls = None
            if lst.tls_cert and lst.tls_key:
                tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                tls.load_cert_chain(lst.tls_cert, lst.tls_key)
            srv = await loop.create_server(lambda lst=lst: Connection(self, lst), lst.host, lst.port,
                                           ssl=tls, backlog=4096, reuse_address=True,
                                           reuse_port=lst.reuse_port or None)
            self._servers.append(srv)
            log.info("stratum_listening host=%s port=%d tls=%s start_difficulty=%g min_difficulty=%g "
                     "extranonce2_size=%d version_mask=%08x max_line_bytes=%d", lst.host, self.port_of(srv),
                     tls is not None, lst.session.start_difficulty, lst.session.vardiff.min_difficulty,
                     lst.session.extranonce2_size, lst.session.version_mask, lst.session.max_line_bytes)
        lim = self.limits
        log.info("stratum_limits max_sessions=%d idle_timeout_s=%g send_stall_timeout_s=%g "
                 "write_high_water_bytes=%d soft_limit_pause_s=%g sweep_interval_s=%g shutdown_timeout_s=%g",
                 lim.max_sessions, lim.idle_timeout_s, lim.send_stall_timeout_s, lim.write_high_water_bytes,
                 lim.soft_limit_pause_s, lim.sweep_interval_s, lim.shutdown_timeout_s)
        self._sweeper = asyncio.create_task(self._sweep_loop())

    @staticmethod
    def port_of(srv: asyncio.AbstractServer) -> int:
        return srv.sockets[0].getsockname()[1] if srv.sockets else 0

    @property
    def ports(self) -> list[int]:
        return [self.port_of(s) for s in self._servers]

    async def shutdown(self) -> None:
        """Stop accepting, tell miners to reconnect, let replies drain, close."""
        self.closing = True
        for srv in self._servers:
            srv.close()
        if self._sweeper:
            self._sweeper.cancel()
        for conn in list(self.connections.values()):
            # No host: reconnect to the same address (another process or this one after restart).
            conn.write(conn.session.reconnect())
        deadline = time.monotonic() + self.limits.shutdown_timeout_s
        while self._tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections.values()):
            conn.close("shutdown")
        for srv in self._servers:
            await srv.wait_closed()
        log.info("stratum_stopped")

    # ---- jobs ----------------------------------------------------------------------------------
    def broadcast_job(self, job: Job) -> int:
        """Adds the job to the book and writes it to every authorized session; returns the count."""
        started = time.perf_counter()
        self.jobs.add(job)
        notify = encode_notification("mining.notify", job.notify_params())
        network_difficulty = difficulty_for_target(job.network_target)
        sent = 0
        gets_work = self.gets_work
        allowed: dict[str, bool] = {}     # per login, asked once per broadcast (100k sessions, few logins)
        # The loop runs once per session at every block: nothing in it may cost more than it must.
        for conn in self.connections.values():
            session = conn.session
            if gets_work is not None:
                for account in session.workers.values():
                    ok = allowed.get(account.login)
                    if ok is None:
                        ok = allowed[account.login] = gets_work(account)
                    if ok:
                        break
                else:
                    continue
            data = session.job_message(job, notify, network_difficulty)
            if data is not None and not conn.closed:
                conn.transport.write(data)
                sent += 1
        self.stats.last_fanout_s = time.perf_counter() - started
        return sent

    def show_message(self, predicate, text: str, disconnect: bool = False) -> int:
        """Sends `client.show_message` to sessions whose account matches; optionally closes them."""
        hit = 0
        for conn in list(self.connections.values()):
            if any(predicate(acc) for acc in conn.session.workers.values()):
                conn.write(conn.session.show_message(text))
                if disconnect:
                    conn.close("refused: " + text)
                hit += 1
        return hit

    # ---- shares --------------------------------------------------------------------------------
    @property
    def overloaded(self) -> bool:
        return self.stats.shares_in_flight >= self.limits.max_shares_in_flight

    def hold(self, conn: "Connection") -> None:
        """Stop reading a session until the backlog of shares drains (see `max_shares_in_flight`)."""
        if conn not in self._held and conn.transport is not None:
            conn.transport.pause_reading()
            self._held.add(conn)
            self.stats.read_pauses += 1

    def _settled(self, count: int) -> None:
        self.stats.shares_in_flight -= count
        if self._held and self.stats.shares_in_flight <= self.limits.max_shares_in_flight // 2:
            held, self._held = self._held, set()
            now = time.monotonic()
            for conn in held:
                if not conn.closed and conn.paused_until <= now:   # not also paused for misbehaviour
                    conn.transport.resume_reading()

    def queue_share(self, conn: "Connection", check: SubmitCheck) -> None:
        self.stats.shares_in_flight += 1
        self._batch.append((conn, check, time.perf_counter()))
        if not self._batch_scheduled:
            self._batch_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_batch)

    def _flush_batch(self) -> None:
        self._batch_scheduled = False
        batch, self._batch = self._batch, []
        by_job: dict[str, list[tuple[Connection, SubmitCheck, float]]] = defaultdict(list)
        still_authorized = self.still_authorized
        allowed: dict[str, bool] = {}
        for item in batch:
            conn, check, _ = item
            if still_authorized is not None:
                account = conn.session.workers[check.worker]
                ok = allowed.get(account.login)
                if ok is None:
                    ok = allowed[account.login] = still_authorized(account)
                if not ok:
                    if not conn.closed:
                        conn.handle(conn.session.refuse_share(
                            check, ErrorCode.UNAUTHORIZED_WORKER, "Unauthorized worker: licence no longer valid",
                            "licence_invalid", time.monotonic()))
                    continue
            by_job[check.job.job_id].append(item)
        accepted: list[tuple[Connection, SubmitCheck, ShareResult, float]] = []
        for items in by_job.values():
            job = items[0][1].job
            try:
                results = self.hasher.hash_batch(job, [c.submission for _, c, _ in items])
            except Exception:
                log.exception("share_hashing_failed job=%s count=%d", job.job_id, len(items))
                results = None
            for i, (conn, check, t0) in enumerate(items):
                if conn.closed:
                    continue
                if results is None:
                    conn.handle(conn.session.share_failed(check, time.monotonic()))
                elif not results[i].meets_share:
                    conn.handle(conn.session.finish_share(check, results[i], time.monotonic()))
                else:
                    accepted.append((conn, check, results[i], t0))
        if accepted:
            # One task and one sink call for the whole turn's shares, not one per share.
            self.spawn(self._accept_batch(accepted))
        self._settled(len(batch) - len(accepted))

    async def _accept_batch(self, accepted: list[tuple["Connection", SubmitCheck, ShareResult, float]]) -> None:
        try:
            await self._answer_batch(accepted)
        finally:
            self._settled(len(accepted))

    async def _answer_batch(self, accepted: list[tuple["Connection", SubmitCheck, ShareResult, float]]) -> None:
        shares = [AcceptedShare(conn.session.workers[check.worker], conn.session.peer, check.job_id, check.job,
                                check.submission, check.difficulty, result)
                  for conn, check, result, _ in accepted]
        try:
            refused: Collection[int] = await self.sink.accept_batch(shares)
        except Exception:
            # Not durable means not acknowledged: the miners get an error, never a false `true`.
            log.exception("share_sink_failed count=%d", len(shares))
            refused = range(len(shares))
        now, done = time.monotonic(), time.perf_counter()
        stats = self.stats
        latencies = stats.submit_latencies
        if refused:
            refused = set(refused)
        for i, (conn, check, result, t0) in enumerate(accepted):
            if refused and i in refused:
                if not conn.closed:
                    conn.handle(conn.session.share_failed(check, now))
                continue
            stats.shares[("accepted", "")] += 1
            stats.accepted_difficulty += check.difficulty
            if result.meets_network:
                stats.blocks_found += 1
            if len(latencies) < 100_000:
                latencies.append(done - t0)
            if not conn.closed:
                conn.handle(conn.session.finish_share(check, result, now))

    # ---- authorization -------------------------------------------------------------------------
    async def authorize(self, conn: "Connection", req: AuthorizeRequest) -> None:
        try:
            result: Account | Refusal = await self.authorizer.authorize(req.worker, req.password, conn.session.peer)
        except Exception:
            log.exception("authorizer_failed conn=%d", conn.id)
            result = Refusal("internal_error", "Authorization is unavailable, try again later")
        if isinstance(result, Refusal):
            self.stats.authorize_refused[result.reason] += 1
            log.info("authorize_refused conn=%d reason=%s", conn.id, result.reason)
        else:
            log.info("authorized conn=%d login=%s", conn.id, result.login)
        if conn.closed:
            return
        now = time.monotonic()
        conn.handle(conn.session.finish_authorize(req, result, now))
        conn.handle(conn.session.receive_pending(now))

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- timers --------------------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.limits.sweep_interval_s)
            now = time.monotonic()
            for conn in list(self.connections.values()):
                try:
                    conn.sweep(now)
                except Exception:
                    log.exception("sweep_failed conn=%d", conn.id)


class Connection(asyncio.Protocol):
    __slots__ = ("server", "listener", "id", "session", "transport", "closed", "last_read",
                 "stall_since", "paused_until")

    def __init__(self, server: StratumServer, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.id = next(server._ids)
        self.session: Session = None  # type: ignore[assignment]
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.last_read = time.monotonic()
        self.stall_since: float | None = None
        self.paused_until = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        srv = self.server
        peername = transport.get_extra_info("peername") or ("?", 0)
        now = time.monotonic()
        self.session = Session(self.listener.session, srv.jobs, srv.extranonces, Peer(str(peername[0]),
                               int(peername[1])), now)
        if srv.closing or len(srv.connections) >= srv.limits.max_sessions:
            self.closed = True
            transport.abort()
            srv.stats.connections_closed["max_sessions"] += 1
            return
        transport.set_write_buffer_limits(high=srv.limits.write_high_water_bytes)
        srv.connections[self.id] = self
        srv.stats.connections_opened += 1
        log.debug("session_open conn=%d", self.id)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        now = time.monotonic()
        self.last_read = now
        try:
            self.handle(self.session.receive_data(data, now))
        except Exception:
            # A bug of ours must not reach the miner as a traceback, nor leave a half-dead session.
            log.exception("session_failed conn=%d", self.id)
            self.close("internal error")
            return
        if self.server.overloaded:
            self.server.hold(self)
        if not self.closed and self.session.cost.over_soft(now):
            # Over the soft limit: stop reading for a while; the peer's own sends back up.
            assert self.transport is not None
            self.transport.pause_reading()
            self.paused_until = now + self.server.limits.soft_limit_pause_s
            asyncio.get_running_loop().call_later(self.server.limits.soft_limit_pause_s, self._resume)

    def _resume(self) -> None:
        if not self.closed and self.transport is not None and self not in self.server._held:
            self.transport.resume_reading()

    def handle(self, events: list[Event]) -> None:
        srv = self.server
        for ev in events:
            if isinstance(ev, Send):
                self.write(ev.data)
            elif isinstance(ev, SubmitCheck):
                srv.queue_share(self, ev)
            elif isinstance(ev, AuthorizeRequest):
                srv.spawn(srv.authorize(self, ev))
            elif isinstance(ev, ShareRejected):
                srv.stats.shares[("rejected", ev.reason)] += 1
            elif isinstance(ev, DifficultyChanged):
                log.debug("difficulty conn=%d difficulty=%g", self.id, ev.difficulty)
            elif isinstance(ev, Close):
                self.close(ev.reason)
                return

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.stall_since = time.monotonic()

    def resume_writing(self) -> None:
        self.stall_since = None

    def sweep(self, now: float) -> None:
        if self.closed:
            return
        lim = self.server.limits
        if self.stall_since is not None and now - self.stall_since > lim.send_stall_timeout_s:
            self.close(f"send stalled over send_stall_timeout_s={lim.send_stall_timeout_s:g}")
        elif now - self.last_read > lim.idle_timeout_s:
            self.close(f"idle over idle_timeout_s={lim.idle_timeout_s:g}")
        else:
            self.handle(self.session.tick(now))

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        log.info("session_close conn=%d reason=%s", self.id, reason)
        key = reason.split(" ")[0].rstrip(":")
        self.server.stats.connections_closed[key] += 1
        if self.transport is not None:
            if self.stall_since is not None:
                self.transport.abort()
            else:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.server.stats.connections_closed["peer"] += 1
        self.server.connections.pop(self.id, None)
        if self.session is not None:
            self.session.close()


__all__ = ["StratumServer", "Listener", "ServerLimits", "ServerStats", "Connection", "State",
           "ExtranonceExhausted"]
