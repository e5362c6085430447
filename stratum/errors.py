"""Stratum error codes (STRATUM-SPEC §1.2) and the typed errors the sans-IO core raises or returns."""
from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    OTHER = 20
    JOB_NOT_FOUND = 21        # unknown or stale job
    DUPLICATE_SHARE = 22
    LOW_DIFFICULTY = 23
    UNAUTHORIZED_WORKER = 24
    NOT_SUBSCRIBED = 25


class ProtocolError(Exception):
    """Bytes from a peer that are not a Stratum message. `fatal` errors close the connection."""
    fatal = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LineTooLong(ProtocolError):
    fatal = True


class MalformedJSON(ProtocolError):
    pass


class InvalidMessage(ProtocolError):
    """Valid JSON that is not a request, notification or response."""


class StratumError(Exception):
    """A refusal to send back to the miner as `[code, message, null]`."""

    def __init__(self, code: ErrorCode, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # a machine name for metrics and logs ("stale", "bad_ntime", ...)
        self.reason = reason or code.name.lower()
