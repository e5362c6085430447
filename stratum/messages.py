"""Typed Stratum V1 messages: parsing a line into a `Request` or `Response`, and serialising replies.

Stratum uses the JSON-RPC 1.0 shape (STRATUM-SPEC §1.1): requests `{id, method, params}`,
notifications are requests with `id: null`, responses `{id, result, error}`. Any input either becomes
one of these types or raises a `ProtocolError` subclass; nothing else escapes `parse_message`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import ErrorCode, InvalidMessage, MalformedJSON

MessageId = int | str | None


@dataclass(frozen=True, slots=True)
class Request:
    id: MessageId
    method: str
    params: list[Any]

    @property
    def is_notification(self) -> bool:
        return self.id is None


@dataclass(frozen=True, slots=True)
class Response:
    id: MessageId
    result: Any
    error: Any


def _reject_constant(name: str) -> None:
    # NaN and Infinity are not JSON; Python's parser would accept them silently.
    raise MalformedJSON(f"non-standard JSON constant {name}")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def parse_message(line: bytes) -> Request | Response:
    try:
        text = line.decode("utf-8")
        obj, end = _decoder.raw_decode(text.strip())
        if end != len(text.strip()):
            raise MalformedJSON("trailing data after the JSON object")
    except MalformedJSON:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedJSON(f"malformed JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise InvalidMessage("message is not a JSON object")
    msg_id = obj.get("id")
    if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, (int, str))):
        raise InvalidMessage("id must be an integer, a string or null")
    if isinstance(msg_id, str) and len(msg_id) > 64:
        raise InvalidMessage("id is longer than 64 characters")
    if "method" in obj:
        method = obj["method"]
        if not isinstance(method, str) or not method or len(method) > 64:
            raise InvalidMessage("method must be a non-empty string of at most 64 characters")
        params = obj.get("params", [])
        if params is None:
            params = []
        if not isinstance(params, list):
            raise InvalidMessage("params must be an array")
        return Request(msg_id, method, params)
    if "result" in obj or "error" in obj:
        return Response(msg_id, obj.get("result"), obj.get("error"))
    raise InvalidMessage("message has neither a method nor a result")


# One encoder for every message: json.dumps with separators builds a new encoder per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _dump(obj: dict[str, Any]) -> bytes:
    return _encode(obj).encode() + b"\n"


def encode_result(msg_id: MessageId, result: Any) -> bytes:
    if result is True and type(msg_id) is int:
        # The accepted-share reply, once per share: the same bytes as the JSON encoder gives.
        return b'{"id":%d,"result":true,"error":null}\n' % msg_id
    return _dump({"id": msg_id, "result": result, "error": None})


def encode_error(msg_id: MessageId, code: ErrorCode | int, message: str) -> bytes:
    # The array form [code, message, traceback] (STRATUM-SPEC §1.2); the traceback is always null.
    return _dump({"id": msg_id, "result": None, "error": [int(code), message, None]})


def encode_notification(method: str, params: list[Any]) -> bytes:
    return _dump({"id": None, "method": method, "params": params})


def encode_request(msg_id: MessageId, method: str, params: list[Any]) -> bytes:
    return _dump({"id": msg_id, "method": method, "params": params})
