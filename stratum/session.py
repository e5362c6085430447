"""One miner connection as a sans-IO state machine: bytes in, events out.

Everything that affects the connection state lives here: the table `METHOD_RULES` says which state a
method needs and what a peer below that state gets back, and `State` moves only
connected -> subscribed -> authorized. The asyncio server feeds bytes with `receive_data`, carries out
the events (send bytes, ask the authorizer, hash a share, close) and reports back with
`finish_authorize` / `finish_share`. Times are passed in, so a whole session runs in a test with no
socket and no clock.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from .cost import CostLimits, CostMeter
from .difficulty import difficulty_for_target, target_for_difficulty
from .errors import ErrorCode, LineTooLong, ProtocolError, StratumError
from .extranonce import Extranonce1Allocator, ExtranonceExhausted
from .framing import LineFramer
from .interfaces import Account, Peer, Refusal
from .jobbook import JobBook
from .jobs import Job, ShareResult
from .messages import (MessageId, Request, encode_error, encode_notification, encode_request,
                       encode_result, parse_message)
from .submit import SubmitCheck, check_submit
from .vardiff import Vardiff, VardiffConfig


class State(IntEnum):
    CONNECTED = 0
    SUBSCRIBED = 1
    AUTHORIZED = 2


# method -> (handler name, state it needs, the error for a peer below that state)
METHOD_RULES: dict[str, tuple[str, State, ErrorCode]] = {
    "mining.configure": ("_on_configure", State.CONNECTED, ErrorCode.OTHER),
    "mining.subscribe": ("_on_subscribe", State.CONNECTED, ErrorCode.OTHER),
    "mining.extranonce.subscribe": ("_on_extranonce_subscribe", State.CONNECTED, ErrorCode.OTHER),
    "mining.suggest_difficulty": ("_on_suggest_difficulty", State.CONNECTED, ErrorCode.OTHER),
    "mining.suggest_target": ("_on_suggest_target", State.CONNECTED, ErrorCode.OTHER),
    "mining.authorize": ("_on_authorize", State.SUBSCRIBED, ErrorCode.NOT_SUBSCRIBED),
    "mining.submit": ("_on_submit", State.SUBSCRIBED, ErrorCode.NOT_SUBSCRIBED),
}


@dataclass(frozen=True, slots=True)
class SessionConfig:
    extranonce2_size: int = 8
    version_mask: int = 0x1FFFE000     # BIP320's general-purpose bits
    start_difficulty: float = 1.0
    vardiff: VardiffConfig = field(default_factory=VardiffConfig)
    ntime_future_s: int = 7000         # consensus allows 2 h ahead; keep a margin under 7200
    max_workers: int = 256             # workers one connection may authorize
    max_line_bytes: int = 16 * 1024
    costs: CostLimits = field(default_factory=CostLimits)


# ---- events the server carries out -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


@dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    msg_id: MessageId
    worker: str
    password: str


@dataclass(frozen=True, slots=True)
class ShareRejected:
    worker: str | None
    reason: str
    code: ErrorCode


@dataclass(frozen=True, slots=True)
class DifficultyChanged:
    difficulty: float


Event = Send | Close | AuthorizeRequest | SubmitCheck | ShareRejected | DifficultyChanged


class Session:
    def __init__(self, cfg: SessionConfig, jobs: JobBook, extranonces: Extranonce1Allocator,
                 peer: Peer, now: float) -> None:
        self.cfg = cfg
        self.jobs = jobs
        self.peer = peer
        self.state = State.CONNECTED
        self.framer = LineFramer(cfg.max_line_bytes)
        self.cost = CostMeter(cfg.costs, now)
        self.vardiff = Vardiff(cfg.vardiff, cfg.start_difficulty, now)
        self._extranonces = extranonces
        self.extranonce1: bytes | None = None
        self.version_mask = 0              # nothing rolls until mining.configure negotiates it
        self.extranonce_subscribed = False
        self.user_agent = ""
        self.workers: dict[str, Account] = {}
        self.info: dict[str, str] = {}
        self._job_difficulty: dict[str, float] = {}   # job id as sent -> difficulty in force then
        self._job_alias: dict[str, str] = {}          # re-issued job id -> the book's job id
        self._reissues = 0
        self._sent_difficulty: float | None = None
        self._next_request_id = 1
        self._pending_lines: list[bytes] = []
        self._awaiting_authorization = False
        self.closed = False

    # ---- input ---------------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> list[Event]:
        try:
            lines = self.framer.feed(data)
        except LineTooLong as exc:
            return [Close(exc.message)]
        if len(lines) == 1 and not self._pending_lines and not self.closed and not self._awaiting_authorization:
            return self.receive_line(lines[0], now)      # the usual case: one message, nothing held back
        self._pending_lines.extend(lines)
        return self.receive_pending(now)

    def receive_pending(self, now: float) -> list[Event]:
        """Runs buffered lines until one needs the server first (an authorization) or closes."""
        events: list[Event] = []
        while self._pending_lines and not self.closed and not self._awaiting_authorization:
            line = self._pending_lines.pop(0)
            new = self.receive_line(line, now)
            events.extend(new)
            # An authorization must finish before later lines run, so a pipelined submit sees its worker.
            if any(isinstance(e, (Close, AuthorizeRequest)) for e in new):
                break
        return events

    @property
    def has_pending_lines(self) -> bool:
        return bool(self._pending_lines)

    def receive_line(self, line: bytes, now: float) -> list[Event]:
        try:
            msg = parse_message(line)
        except ProtocolError as exc:
            event = "malformed_json" if type(exc).__name__ == "MalformedJSON" else "invalid_message"
            return self._penalise(event, now, [Send(encode_error(None, ErrorCode.OTHER, exc.message))])
        if not isinstance(msg, Request):
            return []       # a miner's answer to one of our requests (e.g. client.get_version)
        rule = METHOD_RULES.get(msg.method)
        if rule is None:
            return self._refuse(msg.id, StratumError(ErrorCode.OTHER, f"Unknown method '{msg.method}'",
                                                     "unknown_method"), now)
        handler, needs, below = rule
        if self.state < needs:
            name = "Not subscribed" if below == ErrorCode.NOT_SUBSCRIBED else "Not allowed yet"
            err = StratumError(below, name, "not_subscribed")
            is_share = msg.method == "mining.submit"
            return self._refuse(msg.id, err, now, worker=_first_str(msg.params) if is_share else None,
                                is_share=is_share)
        try:
            return getattr(self, handler)(msg, now)
        except StratumError as err:
            is_share = msg.method == "mining.submit"
            return self._refuse(msg.id, err, now, worker=_first_str(msg.params) if is_share else None,
                                is_share=is_share)

    # ---- handlers ------------------------------------------------------------------------------
    def _on_configure(self, req: Request, now: float) -> list[Event]:
        if len(req.params) < 1 or not isinstance(req.params[0], list):
            raise StratumError(ErrorCode.OTHER, "configure expects [extensions, parameters]", "invalid_message")
        params = req.params[1] if len(req.params) > 1 and isinstance(req.params[1], dict) else {}
        result: dict[str, Any] = {}
        for ext in req.params[0]:
            if not isinstance(ext, str):
                continue
            if ext == "version-rolling":
                result.update(self._configure_version_rolling(params))
            elif ext == "minimum-difficulty":
                value = params.get("minimum-difficulty.value")
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
                if ok:
                    self.vardiff.set_floor(float(value))
                result["minimum-difficulty"] = ok
            elif ext == "subscribe-extranonce":
                self.extranonce_subscribed = True
                result["subscribe-extranonce"] = True
            elif ext == "info":
                self.info = {k: str(v)[:128] for k, v in params.items() if k.startswith("info.")}
                result["info"] = True
            else:
                result[ext] = False
        return self._reply(req.id, result)

    def _configure_version_rolling(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            miner_mask = int(str(params.get("version-rolling.mask", "ffffffff")), 16) & 0xFFFFFFFF
            min_bits = int(params.get("version-rolling.min-bit-count", 0))
        except (TypeError, ValueError):
            return {"version-rolling": False}
        mask = miner_mask & self.cfg.version_mask
        if mask == 0 or bin(mask).count("1") < min_bits:
            self.version_mask = 0
            return {"version-rolling": False}
        self.version_mask = mask
        return {"version-rolling": True, "version-rolling.mask": f"{mask:08x}"}

    def _on_subscribe(self, req: Request, now: float) -> list[Event]:
        if self.extranonce1 is None:
            if req.params and isinstance(req.params[0], str):
                self.user_agent = req.params[0][:128]
            resume = _hex_or_none(req.params[1]) if len(req.params) > 1 else None
            try:
                self.extranonce1 = self._extranonces.allocate(resume)
            except ExtranonceExhausted:
                return [Close("every extranonce1 is in use")]
        en1 = self.extranonce1.hex()
        result = [[["mining.set_difficulty", en1], ["mining.notify", en1]], en1, self.cfg.extranonce2_size]
        events: list[Event] = self._reply(req.id, result)
        self.state = max(self.state, State.SUBSCRIBED)
        return events

    def _on_extranonce_subscribe(self, req: Request, now: float) -> list[Event]:
        self.extranonce_subscribed = True
        return self._reply(req.id, True)

    def _on_suggest_difficulty(self, req: Request, now: float) -> list[Event]:
        value = req.params[0] if req.params else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise StratumError(ErrorCode.OTHER, "suggest_difficulty expects a positive number", "invalid_message")
        return self._suggest(float(value), req.id, now)

    def _on_suggest_target(self, req: Request, now: float) -> list[Event]:
        value = _hex_or_none(req.params[0]) if req.params else None
        if not value or int.from_bytes(value, "big") == 0:
            raise StratumError(ErrorCode.OTHER, "suggest_target expects a hex target", "invalid_message")
        return self._suggest(difficulty_for_target(int.from_bytes(value, "big")), req.id, now)

    def _suggest(self, difficulty: float, msg_id: MessageId, now: float) -> list[Event]:
        self.vardiff.set_floor(difficulty)
        events = self._reply(msg_id, True)
        changed = self.vardiff.force(difficulty, now)
        if changed is not None and self._sent_difficulty is not None:
            events.extend(self._difficulty_change_events())
        return events

    def _on_authorize(self, req: Request, now: float) -> list[Event]:
        worker = req.params[0] if req.params else None
        password = req.params[1] if len(req.params) > 1 and isinstance(req.params[1], str) else ""
        if not isinstance(worker, str) or not worker or len(worker) > 128:
            raise StratumError(ErrorCode.UNAUTHORIZED_WORKER, "Worker name must be a string of 1..128 characters",
                               "auth_refused")
        if worker in self.workers:
            return self._reply(req.id, True)
        if len(self.workers) >= self.cfg.max_workers:
            raise StratumError(ErrorCode.UNAUTHORIZED_WORKER, "Too many workers on this connection", "auth_refused")
        self._awaiting_authorization = True
        return [AuthorizeRequest(req.id, worker, password[:256])]

    def finish_authorize(self, request: AuthorizeRequest, result: Account | Refusal, now: float) -> list[Event]:
        self._awaiting_authorization = False
        if isinstance(result, Refusal):
            return self._refuse(request.msg_id, StratumError(ErrorCode.UNAUTHORIZED_WORKER, result.message,
                                                             "auth_refused"), now)
        self.workers[request.worker] = result
        events: list[Event] = self._reply(request.msg_id, True)
        if self.state == State.SUBSCRIBED:
            self.state = State.AUTHORIZED
            job = self.jobs.current
            if job is not None:
                self.vardiff.set_network_ceiling(difficulty_for_target(job.network_target))
                events.append(Send(self._job_bytes(job, self._encode_notify(job))))
        return events

    def _on_submit(self, req: Request, now: float) -> list[Event]:
        assert self.extranonce1 is not None
        check = check_submit(req, self, now)
        return [check]

    def finish_share(self, check: SubmitCheck, result: ShareResult, now: float) -> list[Event]:
        if not result.meets_share:
            return self._refuse(check.msg_id, StratumError(ErrorCode.LOW_DIFFICULTY, "Low difficulty share",
                                                           "low_difficulty"), now, worker=check.worker,
                                is_share=True)
        events: list[Event] = self._reply(check.msg_id, True)
        if self.vardiff.on_share(check.difficulty, now) is not None:
            events.extend(self._difficulty_change_events())
        return events

    def share_failed(self, check: SubmitCheck, now: float) -> list[Event]:
        """The pool could not hash or store the share: say so rather than acknowledge it."""
        return self.refuse_share(check, ErrorCode.OTHER, "Internal error, share not counted", "internal_error", now)

    def refuse_share(self, check: SubmitCheck, code: ErrorCode, message: str, reason: str,
                     now: float) -> list[Event]:
        return self._refuse(check.msg_id, StratumError(code, message, reason), now, check.worker, True)

    # ---- jobs and difficulty -------------------------------------------------------------------
    def job_message(self, job: Job, notify: bytes, network_difficulty: float | None = None) -> bytes | None:
        """Bytes to write for a broadcast job (`notify` and the job's network difficulty are
        computed once for all sessions)."""
        if self.state != State.AUTHORIZED or self.closed:
            return None
        self.vardiff.set_network_ceiling(difficulty_for_target(job.network_target)
                                         if network_difficulty is None else network_difficulty)
        if job.clean_jobs:
            # A clean job empties the book: every job this session knew is gone.
            self._job_difficulty = {}
            self._job_alias = {}
        elif len(self._job_difficulty) > 2 * self.jobs.max_jobs:
            # Forget jobs the book no longer holds: a long-lived tip with refreshes must not grow this.
            self._job_difficulty = {k: v for k, v in self._job_difficulty.items()
                                    if self._job_alias.get(k, k) in self.jobs}
            self._job_alias = {k: v for k, v in self._job_alias.items() if v in self.jobs}
        return self._job_bytes(job, notify)

    def _job_bytes(self, job: Job, notify: bytes, job_id: str | None = None) -> bytes:
        prefix = b""
        if self._sent_difficulty != self.vardiff.difficulty:
            # set_difficulty applies from the next job on, so it always goes first (STRATUM-SPEC §1.7).
            self._sent_difficulty = self.vardiff.difficulty
            prefix = encode_notification("mining.set_difficulty", [self._sent_difficulty])
        self._job_difficulty[job_id or job.job_id] = self._sent_difficulty
        if job_id is not None:
            self._job_alias[job_id] = job.job_id
        return prefix + notify

    def _encode_notify(self, job: Job, job_id: str | None = None, clean: bool | None = None) -> bytes:
        return encode_notification("mining.notify", job.notify_params(job_id, clean))

    def _difficulty_change_events(self) -> list[Event]:
        job = self.jobs.current
        events: list[Event] = [DifficultyChanged(self.vardiff.difficulty)]
        if job is None or self.state != State.AUTHORIZED:
            return events
        # Re-issue the current job under a new id so that shares are judged at the difficulty the
        # miner was told when it got the job (ckpool's diff_change_job_id idea, STRATUM-SPEC §5).
        self._reissues += 1
        job_id = f"{job.job_id}.{self._reissues:x}"
        events.append(Send(self._job_bytes(job, self._encode_notify(job, job_id, False), job_id)))
        return events

    def job_difficulty(self, job_id: str) -> tuple[Job, float] | None:
        diff = self._job_difficulty.get(job_id)
        job = self.jobs.get(self._job_alias.get(job_id, job_id))
        if diff is None or job is None:
            return None
        return job, diff

    def share_target(self, difficulty: float) -> int:
        return target_for_difficulty(difficulty)

    def tick(self, now: float) -> list[Event]:
        if self.state == State.AUTHORIZED and self.vardiff.on_tick(now) is not None:
            return self._difficulty_change_events()
        return []

    # ---- messages the server originates ------------------------------------------------------------
    def show_message(self, text: str) -> bytes:
        return encode_notification("client.show_message", [text])

    def reconnect(self, host: str = "", port: int = 0, wait_s: int = 0) -> bytes:
        params: list[Any] = [host, port, wait_s] if host else []
        return encode_notification("client.reconnect", params)

    def set_extranonce(self, extranonce1: bytes, extranonce2_size: int) -> bytes | None:
        """Moves the session to a new extranonce1; only miners that subscribed to it are told."""
        if not self.extranonce_subscribed:
            return None
        if self.extranonce1 is not None:
            self._extranonces.release(self.extranonce1)
        self.extranonce1 = extranonce1
        return encode_notification("mining.set_extranonce", [extranonce1.hex(), extranonce2_size])

    def request(self, method: str, params: list[Any]) -> bytes:
        self._next_request_id += 1
        return encode_request(self._next_request_id, method, params)

    def close(self) -> None:
        if not self.closed and self.extranonce1 is not None:
            self._extranonces.release(self.extranonce1)
        self.closed = True

    # ---- replies and penalties ------------------------------------------------------------------
    def _reply(self, msg_id: MessageId, result: Any) -> list[Event]:
        return [] if msg_id is None else [Send(encode_result(msg_id, result))]

    def _refuse(self, msg_id: MessageId, err: StratumError, now: float, worker: str | None = None,
                is_share: bool = False) -> list[Event]:
        events: list[Event] = []
        if msg_id is not None:
            events.append(Send(encode_error(msg_id, err.code, err.message)))
        if is_share:
            events.append(ShareRejected(worker, err.reason, err.code))
        return self._penalise(err.reason, now, events)

    def _penalise(self, event: str, now: float, events: list[Event]) -> list[Event]:
        if self.cost.add(event, now) >= self.cfg.costs.hard:
            events.append(Close(f"misbehaviour cost over hard limit {self.cfg.costs.hard:g} (last: {event})"))
        return events


def _first_str(params: list[Any]) -> str | None:
    return params[0] if params and isinstance(params[0], str) else None


def _hex_or_none(value: Any) -> bytes | None:
    if not isinstance(value, str) or len(value) > 128:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None

