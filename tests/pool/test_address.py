"""Payout addresses to scripts: BIP173/BIP350 vectors, base58check, networks, python-bitcoinlib agreement."""
from __future__ import annotations

from typing import Iterator

import bitcoin
import pytest
from bitcoin.core.script import CScript
from bitcoin.wallet import CBitcoinAddress
from hypothesis import given, strategies as st

from pool.address import NETWORKS, AddressChecksumError, AddressError, AddressLengthError, AddressNetworkError, \
    address_to_script, base58check_encode, decode_segwit_address, encode_segwit_address, network_named

# BIP350 "Test vectors for v0-v16 native segregated witness addresses" (valid), with their scriptPubKeys.
VALID_SEGWIT = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "mainnet", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7", "testnet",
     "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    ("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y", "mainnet",
     "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("BC1SW50QGDZ25J", "mainnet", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "mainnet", "5210751e76e8199196d454941c45d1b3a323"),
    ("tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy", "signet",
     "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c", "testnet4",
     "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0", "mainnet",
     "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
]

# BIP350 invalid addresses, each with the error class this module names for it.
INVALID_SEGWIT = [
    ("tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut", "tb", AddressNetworkError),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "bc", AddressChecksumError),
    ("tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf", "tb", AddressChecksumError),
    ("BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL", "bc", AddressChecksumError),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "bc", AddressChecksumError),
    ("tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47", "tb", AddressChecksumError),
    ("bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4", "bc", AddressError),
    ("BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R", "bc", AddressError),
    ("bc1pw5dgrnzv", "bc", AddressLengthError),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav", "bc", AddressLengthError),
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "bc", AddressLengthError),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq", "tb", AddressError),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf", "bc", AddressError),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j", "tb", AddressError),
    ("bc1gmk9yu", "bc", AddressError),
]

GENESIS_P2PKH = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"
GENESIS_HASH160 = "62e907b15cbf27d5425399ebf6f0fb50ebb88f18"


@pytest.fixture
def bitcoinlib_network() -> Iterator[object]:
    """python-bitcoinlib keeps its network in a global; put it back after each test."""
    yield bitcoin.SelectParams
    bitcoin.SelectParams("mainnet")


@pytest.mark.parametrize("address, network, script", VALID_SEGWIT)
def test_bip350_valid_addresses(address: str, network: str, script: str) -> None:
    assert address_to_script(address, network).hex() == script


@pytest.mark.parametrize("address, hrp, error", INVALID_SEGWIT)
def test_bip350_invalid_addresses(address: str, hrp: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_segwit_address(hrp, address)


def test_genesis_p2pkh() -> None:
    assert address_to_script(GENESIS_P2PKH, "mainnet").hex() == "76a914" + GENESIS_HASH160 + "88ac"


def test_base58_typo_is_a_checksum_error() -> None:
    with pytest.raises(AddressChecksumError):
        address_to_script(GENESIS_P2PKH[:-1] + "b", "mainnet")


def test_base58_foreign_character() -> None:
    with pytest.raises(AddressError, match="not base58"):
        address_to_script(GENESIS_P2PKH[:-1] + "0", "mainnet")


def test_base58_payload_of_wrong_length() -> None:
    with pytest.raises(AddressLengthError):
        address_to_script(base58check_encode(b"\x00" + bytes(21)), "mainnet")


def test_unknown_base58_version() -> None:
    with pytest.raises(AddressError, match="unknown base58 version"):
        address_to_script(base58check_encode(b"\x30" + bytes(20)), "mainnet")


@pytest.mark.parametrize("address, network", [
    (GENESIS_P2PKH, "testnet"),
    (GENESIS_P2PKH, "regtest"),
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "testnet4"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7", "mainnet"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7", "regtest"),
    (base58check_encode(b"\x6f" + bytes(20)), "mainnet"),
    (base58check_encode(b"\xc4" + bytes(20)), "mainnet"),
])
def test_wrong_network_is_named(address: str, network: str) -> None:
    with pytest.raises(AddressNetworkError):
        address_to_script(address, network)


def test_regtest_bech32_prefix() -> None:
    program = bytes(range(20))
    address = encode_segwit_address("bcrt", 0, program)
    assert address.startswith("bcrt1q")
    assert address_to_script(address, "regtest") == b"\x00\x14" + program
    with pytest.raises(AddressNetworkError):
        address_to_script(address, "signet")


def test_test_networks_share_base58_versions() -> None:
    address = base58check_encode(b"\x6f" + bytes(range(20)))
    scripts = {address_to_script(address, net) for net in ("testnet", "testnet4", "signet", "regtest")}
    assert scripts == {b"\x76\xa9\x14" + bytes(range(20)) + b"\x88\xac"}


def test_unknown_network_and_empty_address() -> None:
    with pytest.raises(AddressError, match="unknown network"):
        network_named("litecoin")
    with pytest.raises(AddressLengthError):
        address_to_script("   ", "mainnet")


@pytest.mark.parametrize("params, network", [("mainnet", "mainnet"), ("testnet", "testnet"),
                                             ("signet", "signet"), ("regtest", "regtest")])
@pytest.mark.parametrize("kind", ["p2pkh", "p2sh", "p2wpkh", "p2wsh"])
def test_agrees_with_python_bitcoinlib(bitcoinlib_network, params: str, network: str, kind: str) -> None:
    bitcoinlib_network(params)
    digest = bytes(range(1, 33)) if kind == "p2wsh" else bytes(range(1, 21))
    script = {
        "p2pkh": CScript(b"\x76\xa9\x14" + digest + b"\x88\xac"),
        "p2sh": CScript(b"\xa9\x14" + digest + b"\x87"),
        "p2wpkh": CScript(b"\x00\x14" + digest),
        "p2wsh": CScript(b"\x00\x20" + digest),
    }[kind]
    address = str(CBitcoinAddress.from_scriptPubKey(script))
    assert address_to_script(address, network) == bytes(script)
    assert bytes(CBitcoinAddress(address).to_scriptPubKey()) == address_to_script(address, network)


@given(st.integers(min_value=0, max_value=16), st.binary(min_size=2, max_size=40),
       st.sampled_from(sorted(NETWORKS)))
def test_segwit_encode_decode_round_trip(version: int, program: bytes, network: str) -> None:
    if version == 0 and len(program) not in (20, 32):
        return
    net = network_named(network)
    address = encode_segwit_address(net.hrp, version, program)
    assert decode_segwit_address(net.hrp, address) == (version, program)
    assert decode_segwit_address(net.hrp, address.upper()) == (version, program)
    script = address_to_script(address, network)
    assert script[0] == (0 if version == 0 else 0x50 + version) and script[2:] == program


@given(st.binary(min_size=20, max_size=20), st.sampled_from(sorted(NETWORKS)), st.booleans())
def test_base58_round_trip(digest: bytes, network: str, p2sh: bool) -> None:
    net = network_named(network)
    address = base58check_encode(bytes((net.p2sh_version if p2sh else net.p2pkh_version,)) + digest)
    script = address_to_script(address, network)
    assert digest in script
