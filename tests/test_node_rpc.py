"""RpcClient against the Bitcoin Core stand-in over real sockets, and the real mainnet data it serves."""
from __future__ import annotations

import asyncio
import base64
import json
from hashlib import sha256

import pytest
from bitcoin.core import CTransaction, b2lx

from bitcoind_standin import BitcoindStandin, wait_s
from pool.node_rpc import NodeAuthFailed, NodeUnreachable, RpcClient, RpcError, RpcTimeout
from pool.template import BlockTemplate
from standin_chain import VECTORS

PASSWORD = "standin-password"


def dsha256(data: bytes) -> bytes:
    return sha256(sha256(data).digest()).digest()


def strip_witness(raw: bytes) -> bytes:
    """The legacy serialisation of a BIP144 transaction, by hand: drop marker, flag and witnesses."""
    if raw[4:6] != b"\x00\x01":
        return raw
    pos = 6

    def varint() -> int:
        nonlocal pos
        first = raw[pos]
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}.get(first, 0)
        value = int.from_bytes(raw[pos + 1:pos + 1 + size], "little") if size else first
        pos += 1 + size
        return value

    n_in = varint()
    for _ in range(n_in):
        pos += 36
        script_len = varint()     # read first: `pos += varint()` would add to the stale pos
        pos += script_len + 4
    for _ in range(varint()):
        pos += 8
        script_len = varint()
        pos += script_len
    end_of_outputs = pos
    for _ in range(n_in):
        for _ in range(varint()):
            item_len = varint()
            pos += item_len
    assert len(raw) - pos == 4, "locktime must be all that is left"
    return raw[:4] + raw[6:end_of_outputs] + raw[pos:]


@pytest.fixture
async def node():
    standin = BitcoindStandin(password=PASSWORD)
    await standin.start()
    yield standin
    await standin.close()


@pytest.fixture
async def client(node):
    rpc = RpcClient(node.url, user="kzpool", password=PASSWORD, timeout_s=wait_s(2))
    yield rpc
    await rpc.close()


# Real mainnet data ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tx", VECTORS["transactions"], ids=lambda t: t["txid"][:8])
def test_real_transactions_hash_to_their_published_ids(tx):
    raw = bytes.fromhex(tx["hex"])
    legacy = strip_witness(raw)
    assert dsha256(legacy)[::-1].hex() == tx["txid"]
    assert dsha256(raw)[::-1].hex() == tx["wtxid"]
    assert len(raw) == tx["size"] and 3 * len(legacy) + len(raw) == tx["weight"]
    parsed = CTransaction.deserialize(raw)       # and an independent library agrees
    assert b2lx(parsed.GetTxid()) == tx["txid"] and parsed.serialize() == raw


def test_segwit_vector_really_has_a_witness():
    segwit = [t for t in VECTORS["transactions"] if t["txid"] != t["wtxid"]]
    assert [t["txid"] for t in segwit] == ["8f907925d2ebe48765103e6845c06f1f2bb77c6adc1cc002865865eb5cfd5c1c"]


def test_block_100000_header_and_merkle_root():
    block = VECTORS["block_100000"]
    raw = bytes.fromhex(block["block_hex"])
    assert dsha256(raw[:80])[::-1].hex() == block["hash"]
    leaves = [dsha256(bytes.fromhex("01000000010000000000000000000000000000000000000000000000000000000000000000"
                                    "ffffffff08044c86041b020602ffffffff0100f2052a010000004341041b0e8c2567c1253"
                                    "6aa13357b79a073dc4444acb83c4ec7a0e2f99dd7457516c5817242da796924ca4e99947d"
                                    "087fedf9ce467cb9f7c6287078f801df276fdf84ac00000000"))]
    leaves += [bytes.fromhex(t["txid"])[::-1] for t in VECTORS["transactions"][:3]]
    level = leaves
    while len(level) > 1:
        level = [dsha256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    assert level[0][::-1].hex() == block["merkleroot"] == raw[36:68][::-1].hex()
    assert raw.endswith(b"".join(bytes.fromhex(t["hex"]) for t in VECTORS["transactions"][:3]))


# The client ----------------------------------------------------------------------------------------
async def test_template_from_real_transactions_parses_strictly(client, node):
    raw = await client.call("getblocktemplate", {"rules": ["segwit"]})
    tpl = BlockTemplate.from_rpc(raw, client.name)
    assert tpl.height == 100001 and tpl.prev_hash_display == VECTORS["block_100000"]["hash"]
    assert [tx.txid[::-1].hex() for tx in tpl.transactions] == [t["txid"] for t in VECTORS["transactions"]]
    assert [tx.has_witness for tx in tpl.transactions] == [False, False, False, True]
    assert tpl.coinbasevalue == 50 * 100_000_000 + 189_000
    assert tpl.default_witness_commitment is not None and tpl.default_witness_commitment[:6].hex() == "6a24aa21a9ed"
    assert node.calls[-1] == ("getblocktemplate", [{"rules": ["segwit"]}])


async def test_keep_alive_reuses_one_connection(client, node):
    for _ in range(20):
        assert await client.call("getbestblockhash") == VECTORS["block_100000"]["hash"]
    assert node.connections == 1


async def test_concurrent_calls_while_a_long_poll_waits(client, node):
    tpl = await client.call("getblocktemplate", {"rules": ["segwit"]})
    long_poll = asyncio.create_task(
        client.call("getblocktemplate", {"rules": ["segwit"], "longpollid": tpl["longpollid"]}, timeout_s=wait_s(5)))
    for _ in range(3):
        assert await client.call("getbestblockhash") == tpl["previousblockhash"]
    assert not long_poll.done()
    new_tip = node.mine()[0]
    assert (await asyncio.wait_for(long_poll, wait_s(2)))["previousblockhash"] == new_tip
    assert node.connections == 2


async def test_error_objects_become_rpc_errors(client):
    with pytest.raises(RpcError) as err:
        await client.call("getmininginfo")
    assert (err.value.code, err.value.message) == (-32601, "Method not found")
    with pytest.raises(RpcError) as err:
        await client.call("getblocktemplate", {})
    assert err.value.code == -8 and "segwit rule set" in err.value.message
    with pytest.raises(RpcError) as err:
        await client.call("getblockheader", 5)
    assert err.value.code == -3 and "not of expected type string" in err.value.message
    with pytest.raises(RpcError) as err:
        await client.call("getblockheader", "00" * 32)
    assert (err.value.code, err.value.message) == (-5, "Block not found")
    with pytest.raises(RpcError) as err:
        await client.call("submitblock", "zz")
    assert (err.value.code, err.value.message) == (-22, "Block decode failed")
    assert await client.call("getbestblockhash")    # the connection survived every error


async def test_wrong_password_is_auth_failure_without_secrets(node):
    rpc = RpcClient(node.url, user="kzpool", password="not-the-password")
    with pytest.raises(NodeAuthFailed) as err:
        await rpc.call("getbestblockhash")
    assert node.auth_failures == 1 and "not-the-password" not in str(err.value)
    await rpc.close()


async def test_credentials_in_url_stay_out_of_the_name(node):
    rpc = RpcClient(f"http://kzpool:{PASSWORD}@127.0.0.1:{node.port}")
    assert await rpc.call("getbestblockhash")
    assert PASSWORD not in rpc.name and rpc.name == f"127.0.0.1:{node.port}"
    await rpc.close()


async def test_cookie_is_reread_after_a_node_restart(tmp_path):
    node = BitcoindStandin(user=None, cookie_dir=tmp_path)
    await node.start()
    rpc = RpcClient(node.url, cookie_file=tmp_path / ".cookie", timeout_s=wait_s(2))
    assert await rpc.call("getbestblockhash")
    await node.stop()
    await node.start()                      # same port, new cookie
    assert await rpc.call("getbestblockhash")
    assert node.auth_failures == 1          # one 401 with the old cookie, then the re-read one worked
    await node.close()
    await rpc.close()
    fresh = RpcClient(node.url, cookie_file=tmp_path / ".cookie")
    with pytest.raises(NodeAuthFailed, match="cookie"):
        await fresh.call("getbestblockhash")   # Core deletes the cookie on shutdown: no credentials
    await fresh.close()


async def test_unreachable_then_back_on_the_same_port(client, node):
    await client.call("getbestblockhash")
    await node.stop()
    with pytest.raises(NodeUnreachable):
        await client.call("getbestblockhash")
    await node.start()
    assert await client.call("getbestblockhash")


async def test_a_dropped_keep_alive_connection_is_retried_once(client, node):
    await client.call("getbestblockhash")
    await node.stop()      # closes the idle keep-alive connection from the server side
    await node.start()
    assert await client.call("getbestblockhash")
    assert node.connections == 2


async def test_a_hung_node_times_out(client, node):
    node.stall = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RpcTimeout):
        await client.call("getbestblockhash", timeout_s=0.2)
    assert loop.time() - started < wait_s(1)


# Raw HTTP: what Core's server does on the wire ----------------------------------------------------
async def _raw(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    status = (await reader.readline()).decode()
    headers = {}
    while (line := await reader.readline()) != b"\r\n":
        key, _, value = line.decode().partition(":")
        headers[key.lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    writer.close()
    return status, headers, body


def _post(body: bytes, auth: str | None) -> bytes:
    head = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    if auth:
        head += f"Authorization: Basic {base64.b64encode(auth.encode()).decode()}\r\n"
    return head.encode() + b"\r\n" + body


async def test_wire_format_of_errors_and_auth(node):
    call = json.dumps({"jsonrpc": "1.0", "id": "x7", "method": "nosuch", "params": []}).encode()
    status, headers, body = await _raw(node.port, _post(call, None))
    assert status.startswith("HTTP/1.1 401") and body == b"" and "basic" in headers["www-authenticate"].lower()
    status, _, body = await _raw(node.port, _post(call, f"kzpool:{PASSWORD}"))
    assert status.startswith("HTTP/1.1 404")
    assert json.loads(body) == {"result": None, "error": {"code": -32601, "message": "Method not found"}, "id": "x7"}
    status, _, body = await _raw(node.port, _post(b"{not json", f"kzpool:{PASSWORD}"))
    assert status.startswith("HTTP/1.1 500") and json.loads(body)["error"]["code"] == -32700
    no_id = json.dumps({"method": "getbestblockhash", "params": []}).encode()
    status, _, body = await _raw(node.port, _post(no_id, f"kzpool:{PASSWORD}"))
    assert status.startswith("HTTP/1.1 400") and json.loads(body)["error"]["code"] == -32600
    named = json.dumps({"id": 1, "method": "getblockheader",
                        "params": {"blockhash": VECTORS["block_100000"]["hash"], "verbose": False}}).encode()
    status, _, body = await _raw(node.port, _post(named, f"kzpool:{PASSWORD}"))
    assert json.loads(body)["result"] == VECTORS["block_100000"]["header_hex"]


async def _serve_once(response: bytes) -> tuple[asyncio.base_events.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_chunked_and_large_replies_are_read():
    result = "ab" * 200_000     # over the size that moves json parsing to a thread
    payload = json.dumps({"result": result, "error": None, "id": 1}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 65536]), payload[i:i + 65536])
                      for i in range(0, len(payload), 65536))
    server, port = await _serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    rpc = RpcClient(f"http://u:p@127.0.0.1:{port}")
    assert await rpc.call("getbestblockhash") == result
    await rpc.close()
    server.close()


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 26\r\n\r\nWork queue depth exceeded\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n",
])
async def test_bad_replies_are_unreachable_not_crashes(response):
    server, port = await _serve_once(response)
    rpc = RpcClient(f"http://u:p@127.0.0.1:{port}", timeout_s=wait_s(2))
    with pytest.raises(NodeUnreachable):
        await rpc.call("getbestblockhash")
    await rpc.close()
    server.close()


def test_url_must_be_plain_http():
    with pytest.raises(ValueError, match="http://"):
        RpcClient("https://127.0.0.1:8332")

