"""Framing and message parsing: vectors, and property-based fuzzing (any bytes -> message or typed error)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratum.errors import InvalidMessage, LineTooLong, MalformedJSON, ProtocolError
from stratum.framing import LineFramer
from stratum.messages import Request, Response, encode_error, encode_result, parse_message

STRATUM_DIR = Path(__file__).resolve().parents[2] / "stratum"


def test_framer_splits_and_keeps_partial_lines():
    f = LineFramer(128)
    assert f.feed(b'{"a":1}\r\n{"b"') == [b'{"a":1}']
    assert f.buffered == 4
    assert f.feed(b':2}\n\n') == [b'{"b":2}']
    assert f.feed(b"") == []


def test_framer_cap_applies_with_and_without_newline():
    f = LineFramer(64)
    with pytest.raises(LineTooLong):
        f.feed(b"x" * 65)
    f = LineFramer(64)
    with pytest.raises(LineTooLong):
        f.feed(b"y" * 100 + b"\n")
    f = LineFramer(64)
    assert f.feed(b"z" * 64 + b"\n") == [b"z" * 64]


@pytest.mark.parametrize("line, kind", [
    (b'{"id":1,"method":"mining.subscribe","params":[]}', Request),
    (b'{"id":null,"method":"mining.suggest_difficulty","params":[0.5]}', Request),
    (b'{"id":"abc","method":"m"}', Request),
    (b'{"id":5,"result":true,"error":null}', Response),
])
def test_parse_valid(line, kind):
    assert isinstance(parse_message(line), kind)


@pytest.mark.parametrize("line, error", [
    (b"{", MalformedJSON), (b"\xff\xfe", MalformedJSON), (b'{"id":1,"method":"x"} trailing', MalformedJSON),
    (b'{"id":NaN,"method":"x"}', MalformedJSON), (b"[1,2]", InvalidMessage), (b'{"id":1}', InvalidMessage),
    (b'{"id":1.5,"method":"x"}', InvalidMessage), (b'{"id":true,"method":"x"}', InvalidMessage),
    (b'{"id":1,"method":7}', InvalidMessage), (b'{"id":1,"method":"x","params":{"a":1}}', InvalidMessage),
    (b"[" * 100000 + b"]" * 100000, MalformedJSON),
])
def test_parse_invalid(line, error):
    with pytest.raises(error):
        parse_message(line)


def test_encoders_follow_the_array_error_form():
    assert json.loads(encode_result(3, True)) == {"id": 3, "result": True, "error": None}
    assert json.loads(encode_error(4, 21, "Job not found")) == {"id": 4, "result": None,
                                                                "error": [21, "Job not found", None]}


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8), st.integers(min_value=64, max_value=512))
def test_fuzz_framer_and_parser_only_raise_protocol_errors(chunks, cap):
    framer = LineFramer(cap)
    for chunk in chunks:
        try:
            lines = framer.feed(chunk)
        except LineTooLong:
            continue
        for line in lines:
            assert len(line) <= cap
            try:
                msg = parse_message(line)
            except ProtocolError:
                continue
            assert isinstance(msg, (Request, Response))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["id", "method", "params", "result", "error", "x"]), json_values, max_size=5))
def test_fuzz_json_objects(obj):
    line = json.dumps(obj).encode()
    try:
        msg = parse_message(line)
    except ProtocolError:
        return
    assert isinstance(msg, (Request, Response))
    if isinstance(msg, Request):
        assert isinstance(msg.method, str) and isinstance(msg.params, list)


def test_protocol_modules_do_no_io():
    """stratum/ is sans-IO: only server.py may import asyncio, sockets, ssl or the rest of the pool."""
    forbidden = {"asyncio", "socket", "ssl", "selectors", "pool", "payouts", "compliance", "uvloop"}
    for path in STRATUM_DIR.glob("*.py"):
        if path.name == "server.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            assert not forbidden.intersection(names), f"{path.name} imports {names}"


@pytest.mark.parametrize("msg_id", [0, 1, 4_294_967_296, -3, "a1", None])
@pytest.mark.parametrize("result", [True, False, None, [1, "x"]])
def test_encode_result_is_the_json_encoding(msg_id, result):
    """The preformatted `true` reply gives exactly the bytes of the general encoder."""
    assert encode_result(msg_id, result) == (json.dumps({"id": msg_id, "result": result, "error": None},
                                                         separators=(",", ":")) + "\n").encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=8),
       st.lists(st.booleans(), max_size=8), st.lists(st.integers(min_value=0, max_value=3), max_size=8))
def test_framer_gives_the_same_lines_however_the_bytes_arrive(lines, crlf, cuts):
    """Whole single lines (the fast path), split lines and several lines per read all give the
    lines a one-shot split of the stream gives."""
    stream = b"".join(line + (b"\r\n" if i < len(crlf) and crlf[i] else b"\n") for i, line in enumerate(lines))
    expected = [ln.rstrip(b"\r") for ln in stream.split(b"\n")[:-1] if ln.rstrip(b"\r").strip()]
    framer, got, pos = LineFramer(4096), [], 0
    for i, line in enumerate(lines):        # read i ends after line i, or mid-line when cut
        end = stream.index(b"\n", pos) + 1
        cut = cuts[i] if i < len(cuts) else 0
        if cut and end - pos > cut:
            got += framer.feed(stream[pos:end - cut])
            got += framer.feed(stream[end - cut:end])
        else:
            got += framer.feed(stream[pos:end])
        pos = end
    assert got == expected and framer.buffered == 0
