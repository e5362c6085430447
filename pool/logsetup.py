"""Structured logs: `time level logger event key=value ...` by default, JSON lines with log.format=json.

Call sites log `"event key=%s ..."`; the JSON formatter splits that back into fields so both formats
carry the same data. Secrets never reach a log line: config is logged through `config.redacted`.

Two filters sit on the handler, so call sites stay as they are:
- `Anonymiser` (log.anonymise = true) replaces logins, worker names and miners' IP addresses with
  salted pseudonyms. The salt is random per process: lines of one run can be correlated with each
  other (the same login gives the same pseudonym), but not with another run or another machine.
- `UpstreamRepeatFilter` lets one line per event and node through per interval for errors that come
  from outside the pool (Bitcoin Core, ZMQ, the template source) and notes how many it held back:
  a node down for an hour must not bury the rest of the log.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import sys
import time
from collections import OrderedDict
from typing import Callable, Iterable

# Values that identify a miner or an account: replaced whole when anonymising.
ANONYMISED_KEYS = frozenset({"login", "worker", "user", "peer", "ip", "addr", "address", "wallet"})
# Third-party loggers kept at WARNING or above whatever the pool's level (SQLAlchemy logs SQL at INFO).
LIBRARY_LOGGERS = ("aiosqlite", "asyncpg", "sqlalchemy", "alembic", "asyncio")
# Values that name the pool's own infrastructure (its nodes, its listeners): never rewritten.
INFRASTRUCTURE_KEYS = frozenset({"node", "nodes", "host", "endpoint", "url", "source"})
# Loggers whose warnings and errors come from systems outside the pool and repeat while those are down.
UPSTREAM_LOGGERS = ("kzpool.bitcoind", "kzpool.node_rpc", "kzpool.zmq", "kzpool.jobs")
# Keys whose values tell apart two streams of the same event (node A down is not node B down).
IDENTITY_KEYS = ("node", "source", "endpoint", "url")

_TOKEN = re.compile(r"\S+")
_IP_CANDIDATE = re.compile(r"\[?([0-9A-Fa-f:.]*[:.][0-9A-Fa-f:.]*)\]?")


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line = f"{stamp} {record.levelname.lower()} {record.name} {record.getMessage()}"
        if record.exc_text or record.exc_info:
            line += "\n" + (record.exc_text or self.formatException(record.exc_info))  # type: ignore[arg-type]
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event, _, rest = message.partition(" ")
        out: dict[str, object] = {"ts": record.created, "level": record.levelname.lower(),
                                  "logger": record.name, "event": event}
        last, loose = "", []
        for part in rest.split(" "):
            key, sep, value = part.partition("=")
            if sep and key.isidentifier():
                out[key], last = value, key
            elif last:
                out[last] = f"{out[last]} {part}"     # a value with spaces: `reason=idle over ...`
            else:
                loose.append(part)
        if loose:
            out["text"] = " ".join(loose)
        if record.exc_text or record.exc_info:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(out, separators=(",", ":"))


class Anonymiser(logging.Filter):
    """Rewrites each record's message (and traceback) with pseudonyms for miners' identities."""

    def __init__(self, salt: bytes | None = None, identities: Iterable[str] = ()) -> None:
        """`identities`: names known up front (the configured logins) replaced wherever they appear,
        e.g. inside the config logged at start."""
        super().__init__()
        self._salt = salt if salt is not None else secrets.token_bytes(16)
        names = sorted({i for i in identities if i}, key=len, reverse=True)
        self._identities = re.compile("|".join(rf"(?<![\w.-]){re.escape(n)}(?![\w-])" for n in names)) if names else None

    def pseudonym(self, value: str) -> str:
        digest = hmac.new(self._salt, value.encode(), hashlib.sha256).hexdigest()
        return f"anon-{digest[:12]}"

    def scrub(self, message: str) -> str:
        return _TOKEN.sub(lambda m: self._token(m.group(0)), message)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.scrub(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub_ips(record.exc_text)
        return True

    def _token(self, token: str) -> str:
        key, sep, value = token.partition("=")
        if sep and key in ANONYMISED_KEYS and value:
            return f"{key}={self.pseudonym(value)}"
        if sep and key in INFRASTRUCTURE_KEYS:
            return token
        if self._identities is not None:
            token = self._identities.sub(lambda m: self.pseudonym(m.group(0)), token)
        return self._scrub_ips(token)

    def _scrub_ips(self, text: str) -> str:
        def replace(m: re.Match[str]) -> str:
            candidate = m.group(1)
            for text_ip in (candidate, candidate.rsplit(":", 1)[0]):    # "1.2.3.4:3333" too
                try:
                    ipaddress.ip_address(text_ip.strip("."))
                except ValueError:
                    continue
                return m.group(0).replace(text_ip.strip("."), self.pseudonym(text_ip.strip(".")))
            return m.group(0)
        return _IP_CANDIDATE.sub(replace, text)


class RepeatLimiter:
    """Lets one occurrence per key through per `interval_s` and counts the ones it held back.

    `check(key)` returns None to suppress, else how many were suppressed since the last one let
    through (0 for a first or a rare occurrence). Keys are bounded: the oldest are forgotten.
    """

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1024) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._seen: OrderedDict[object, tuple[float, int]] = OrderedDict()   # key -> (last let through, held)

    def check(self, key: object) -> int | None:
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
        return 0 if last is None else last[1]


class UpstreamRepeatFilter(logging.Filter):
    """Rate-limits warnings and errors of the upstream loggers, per event and per node."""

    def __init__(self, limiter: RepeatLimiter, loggers: tuple[str, ...] = UPSTREAM_LOGGERS) -> None:
        super().__init__()
        self.limiter = limiter
        self.loggers = loggers

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.loggers):
            return True
        message = record.getMessage()
        fields = dict(t.partition("=")[::2] for t in message.split(" ") if "=" in t)
        key = (record.name, message.partition(" ")[0], record.exc_info[0] if record.exc_info else None,
               tuple(fields.get(k, "") for k in IDENTITY_KEYS))
        held = self.limiter.check(key)
        if held is None:
            return False
        if held:
            record.msg, record.args = f"{message} repeats_suppressed={held}", None
        return True


def setup_logging(level: str = "INFO", fmt: str = "kv", anonymise: bool = False,
                  repeat_interval_s: float = 60.0, identities: Iterable[str] = ()) -> Anonymiser | None:
    """Installs the one handler; returns the anonymiser when enabled (metrics use its pseudonyms too).

    `identities`: logins known from the config (auth.logins), pseudonymised wherever they appear."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.addFilter(UpstreamRepeatFilter(RepeatLimiter(repeat_interval_s)))
    anonymiser = Anonymiser(identities=identities) if anonymise else None
    if anonymiser is not None:
        handler.addFilter(anonymiser)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in LIBRARY_LOGGERS:
        # Their debug lines carry SQL parameters (logins, workers, personal data) and flood the log.
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return anonymiser


def active_anonymiser() -> Anonymiser | None:
    """The anonymiser setup_logging installed, if any: metrics and status label logins with its
    pseudonyms, so a login in a dashboard matches the same login in the logs."""
    for handler in logging.getLogger().handlers:
        for f in handler.filters:
            if isinstance(f, Anonymiser):
                return f
    return None
