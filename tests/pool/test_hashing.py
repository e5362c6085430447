"""Header serialisation and SHA-256d against the four real headers of STRATUM-SPEC §4.1."""
from __future__ import annotations

import json

import pytest
from bitcoin.core import CBlockHeader

from bitcoin_vectors import COPIED_VECTORS, SHARED_VECTORS, VECTORS
from pool.hashing import HEADER_SIZE, build_header, dsha256, hash_to_int, merkle_root_from_branch

HEADERS = VECTORS["block_headers"]


def header_of(vector: dict) -> bytes:
    return build_header(vector["version"], bytes.fromhex(vector["prevhash"])[::-1],
                        bytes.fromhex(vector["merkleroot"])[::-1], vector["time"], vector["bits"],
                        vector["nonce"])


@pytest.mark.parametrize("vector", HEADERS, ids=[h["name"] for h in HEADERS])
def test_header_serialises_to_vector(vector: dict) -> None:
    header = header_of(vector)
    assert len(header) == HEADER_SIZE
    assert header.hex() == vector["header_hex"]


@pytest.mark.parametrize("vector", HEADERS, ids=[h["name"] for h in HEADERS])
def test_header_hash_is_block_hash(vector: dict) -> None:
    digest = dsha256(header_of(vector))
    assert digest[::-1].hex() == vector["hash"]
    assert hash_to_int(digest) == int(vector["hash"], 16)


@pytest.mark.parametrize("vector", HEADERS, ids=[h["name"] for h in HEADERS])
def test_header_agrees_with_python_bitcoinlib(vector: dict) -> None:
    theirs = CBlockHeader(nVersion=vector["version"], hashPrevBlock=bytes.fromhex(vector["prevhash"])[::-1],
                          hashMerkleRoot=bytes.fromhex(vector["merkleroot"])[::-1], nTime=vector["time"],
                          nBits=vector["bits"], nNonce=vector["nonce"])
    assert theirs.serialize() == header_of(vector)
    assert theirs.GetHash() == dsha256(header_of(vector))


def test_dsha256_of_empty_input() -> None:
    # sha256(sha256(b"")) is a fixed, widely quoted constant.
    assert dsha256(b"").hex() == "5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456"


def test_block_100000_merkle_root_from_branch() -> None:
    job = VECTORS["stratum_shaped_block_100000"]
    coinb1, coinb2 = bytes.fromhex(job["notify_params"][2]), bytes.fromhex(job["notify_params"][3])
    coinbase_txid = dsha256(coinb1 + bytes.fromhex("06") + bytes.fromhex("02") + coinb2)
    assert coinbase_txid[::-1].hex() == job["txids_display"][0]
    branch = [bytes.fromhex(h) for h in job["notify_params"][4]]
    root = merkle_root_from_branch(coinbase_txid, branch)
    assert root[::-1].hex() == HEADERS[3]["merkleroot"]


def test_empty_branch_leaves_the_coinbase_hash_as_root() -> None:
    assert merkle_root_from_branch(b"\x11" * 32, []) == b"\x11" * 32


@pytest.mark.parametrize("prev, root", [(bytes(31), bytes(32)), (bytes(32), bytes(33))])
def test_build_header_refuses_wrong_hash_lengths(prev: bytes, root: bytes) -> None:
    with pytest.raises(ValueError):
        build_header(1, prev, root, 0, 0, 0)


def test_build_header_wraps_fields_to_uint32() -> None:
    assert build_header(-1, bytes(32), bytes(32), 2**32 + 5, 0, 0)[:4] == b"\xff\xff\xff\xff"


def test_copied_vectors_match_the_shared_file() -> None:
    if not SHARED_VECTORS.is_file():
        pytest.skip("../shared (the team's reference folder) is not beside this checkout; the other tests "
                    "use the copy in tests/vectors, which this one keeps in step when it can")
    assert json.loads(COPIED_VECTORS.read_text()) == json.loads(SHARED_VECTORS.read_text())
