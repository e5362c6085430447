"""Payout addresses to output scripts: bech32 / bech32m segwit (BIP173, BIP350) and base58check.

The pool pays the coinbase to a script, so the only direction needed is address -> scriptPubKey, checked
against the network the pool runs on: a mainnet address on testnet is refused by name, never paid.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .hashing import dsha256
from .script import push_data


class AddressError(ValueError):
    """An address that cannot be paid to on this network."""


class AddressNetworkError(AddressError):
    """A well-formed address of another network."""


class AddressChecksumError(AddressError):
    """The checksum does not match (a typo, or the wrong bech32 variant for the witness version)."""


class AddressLengthError(AddressError):
    """The address or its payload has a length no valid address has."""


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    hrp: str                 # bech32 human-readable part
    p2pkh_version: int       # base58check version bytes
    p2sh_version: int


NETWORKS: dict[str, Network] = {
    net.name: net for net in (
        Network("mainnet", "bc", 0x00, 0x05),
        Network("testnet", "tb", 0x6F, 0xC4),
        Network("testnet4", "tb", 0x6F, 0xC4),
        Network("signet", "tb", 0x6F, 0xC4),
        Network("regtest", "bcrt", 0x6F, 0xC4),
    )
}


def network_named(name: str) -> Network:
    try:
        return NETWORKS[name]
    except KeyError:
        raise AddressError(f"unknown network {name!r}; expected one of {', '.join(NETWORKS)}") from None


# ---- bech32 / bech32m (BIP173 reference code, BIP350 constants) ----

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
MAX_BECH32_LENGTH = 90


class Bech32Variant(Enum):
    BECH32 = 1               # witness version 0 (BIP173)
    BECH32M = 0x2BC830A3     # witness versions 1..16 (BIP350)


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _GENERATOR[i] if ((top >> i) & 1) else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _convert_bits(data: list[int], from_bits: int, to_bits: int, pad: bool) -> list[int] | None:
    acc = bits = 0
    out: list[int] = []
    max_value = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & max_value)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & max_value)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & max_value):
        return None
    return out


def bech32_decode(text: str) -> tuple[str, list[int], Bech32Variant]:
    """(hrp, 5-bit data without checksum, variant) of a bech32 or bech32m string."""
    if any(ord(c) < 33 or ord(c) > 126 for c in text):
        raise AddressError("bech32 string has characters outside printable ASCII")
    if text.lower() != text and text.upper() != text:
        raise AddressError("bech32 string mixes upper and lower case")
    if len(text) > MAX_BECH32_LENGTH:
        raise AddressLengthError(f"bech32 string longer than {MAX_BECH32_LENGTH} characters")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise AddressLengthError("bech32 string has no separator, an empty prefix or a short checksum")
    if any(c not in _CHARSET for c in text[pos + 1:]):
        raise AddressError("bech32 data part has a character outside the charset")
    hrp = text[:pos]
    data = [_CHARSET.find(c) for c in text[pos + 1:]]
    const = _polymod(_hrp_expand(hrp) + data)
    for variant in Bech32Variant:
        if const == variant.value:
            return hrp, data[:-6], variant
    raise AddressChecksumError("bech32 checksum does not match")


def bech32_encode(hrp: str, data: list[int], variant: Bech32Variant) -> str:
    values = _hrp_expand(hrp) + data
    polymod = _polymod(values + [0] * 6) ^ variant.value
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def decode_segwit_address(hrp: str, address: str) -> tuple[int, bytes]:
    """(witness version, program) of a segwit address whose prefix must be `hrp`."""
    found_hrp, data, variant = bech32_decode(address)
    if found_hrp != hrp:
        raise AddressNetworkError(f"address prefix {found_hrp!r} is not this network's {hrp!r}")
    if not data:
        raise AddressLengthError("segwit address has no witness version")
    version = data[0]
    program = _convert_bits(data[1:], 5, 8, False)
    if version > 16:
        raise AddressError(f"witness version {version} does not exist")
    if program is None:
        raise AddressError("segwit program has invalid padding")
    if not 2 <= len(program) <= 40:
        raise AddressLengthError(f"witness program of {len(program)} bytes (must be 2..40)")
    if version == 0 and len(program) not in (20, 32):
        raise AddressLengthError(f"witness v0 program of {len(program)} bytes (must be 20 or 32)")
    expected = Bech32Variant.BECH32 if version == 0 else Bech32Variant.BECH32M
    if variant is not expected:
        raise AddressChecksumError(f"witness v{version} must use {expected.name.lower()}, not {variant.name.lower()}")
    return version, bytes(program)


def encode_segwit_address(hrp: str, version: int, program: bytes) -> str:
    variant = Bech32Variant.BECH32 if version == 0 else Bech32Variant.BECH32M
    data = [version] + (_convert_bits(list(program), 8, 5, True) or [])
    address = bech32_encode(hrp, data, variant)
    decode_segwit_address(hrp, address)     # refuse to hand out what we would not accept
    return address


def segwit_output_script(version: int, program: bytes) -> bytes:
    """OP_0 or OP_1..OP_16, then a push of the program."""
    return bytes((0 if version == 0 else 0x50 + version,)) + push_data(program)


# ---- base58check ----

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def base58check_decode(text: str) -> bytes:
    """The payload (version byte + data) of a base58check string, checksum verified and removed."""
    value = 0
    for c in text:
        if c not in _B58_INDEX:
            raise AddressError(f"character {c!r} is not base58")
        value = value * 58 + _B58_INDEX[c]
    body = value.to_bytes((value.bit_length() + 7) // 8, "big")
    # Each leading '1' stands for one leading zero byte.
    raw = bytes(len(text) - len(text.lstrip("1"))) + body
    if len(raw) < 5:
        raise AddressLengthError("base58check string too short")
    payload, checksum = raw[:-4], raw[-4:]
    if dsha256(payload)[:4] != checksum:
        raise AddressChecksumError("base58check checksum does not match")
    return payload


def base58check_encode(payload: bytes) -> str:
    raw = payload + dsha256(payload)[:4]
    value = int.from_bytes(raw, "big")
    out = ""
    while value:
        value, digit = divmod(value, 58)
        out = _B58_ALPHABET[digit] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\x00"))) + out


def _base58_output_script(address: str, net: Network) -> bytes:
    payload = base58check_decode(address)
    if len(payload) != 21:
        raise AddressLengthError(f"base58 address payload of {len(payload)} bytes (must be 21)")
    version, digest = payload[0], payload[1:]
    if version == net.p2pkh_version:      # OP_DUP OP_HASH160 <20> OP_EQUALVERIFY OP_CHECKSIG
        return b"\x76\xa9\x14" + digest + b"\x88\xac"
    if version == net.p2sh_version:       # OP_HASH160 <20> OP_EQUAL
        return b"\xa9\x14" + digest + b"\x87"
    if any(version in (n.p2pkh_version, n.p2sh_version) for n in NETWORKS.values()):
        raise AddressNetworkError(f"base58 version byte {version:#04x} belongs to another network than {net.name}")
    raise AddressError(f"unknown base58 version byte {version:#04x}")


def _looks_bech32(address: str) -> bool:
    # No base58check address of these networks starts with a bech32 prefix: their version bytes make
    # them start with 1, 3, m, n or 2.
    lower = address.lower()
    return any(lower.startswith(n.hrp + "1") for n in NETWORKS.values())


def address_to_script(address: str, network: str | Network) -> bytes:
    """The scriptPubKey paying `address` on `network`; AddressError (or a subclass) says why not."""
    net = network if isinstance(network, Network) else network_named(network)
    address = address.strip()
    if not address:
        raise AddressLengthError("empty address")
    if _looks_bech32(address):
        version, program = decode_segwit_address(net.hrp, address)
        return segwit_output_script(version, program)
    return _base58_output_script(address, net)
