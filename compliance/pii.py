"""Personal data at rest: AES-256-GCM for IIN/BIN and names, and a keyed hash to look them up.

One 32-byte master key (file or KZPOOL_PII_KEY) is split with HKDF into an encryption key and an
index key, so the lookup index never reuses the cipher's key. The index is HMAC-SHA256 of the plain
value: equal values meet (duplicate checks, "same owner" checks, lookup by IIN/BIN) while the table
alone reveals nothing; a brute force over the 10^11 possible IINs needs the key.

Blob layout: version byte 0x01 | 12-byte nonce | ciphertext | 16-byte tag. The field name is bound
as associated data, so a name's ciphertext copied into the IIN column fails to decrypt.
A key is named by its key id: 8 bytes from HKDF of the master key with a context of its own, so
it says which key is in use (audit records of a key rotation, `kzpool licences pii-check`) and
reveals nothing of the key or of the keys derived for encryption and the index.
Nothing here logs a value or a key.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import stat
from hashlib import sha256
from pathlib import Path
from typing import Mapping

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

log = logging.getLogger("kzpool.compliance.pii")

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
BLOB_VERSION = b"\x01"
ENV_KEY = "KZPOOL_PII_KEY"
DEMO_KEY_PATH = "./var/pii-demo.key"
_HKDF_SALT = b"kzpool-pii-v1"
KEY_ID_BYTES = 8


class PiiKeyError(ValueError):
    """No usable key: the message says where a key was looked for (never the key)."""


class PiiDecryptError(ValueError):
    """A blob did not decrypt: wrong key, wrong field, or tampering."""


def parse_key(text: bytes) -> bytes:
    """64 hex digits, or base64 of 32 bytes (surrounding whitespace ignored), or 32 raw bytes.
    32 printable characters are refused rather than taken as a raw key: that is a typed password
    or a short hex key, not 256 random bits."""
    stripped = text.strip()
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(stripped.decode("ascii"))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            continue
        if len(key) == KEY_BYTES:
            return key
    if len(text) == KEY_BYTES and not (text.isascii() and bytes(text).decode().isprintable()):
        return bytes(text)
    raise PiiKeyError(f"a PII key must be {KEY_BYTES} bytes: raw, 64 hex digits or base64")


class PiiBox:
    """Encrypts, decrypts and indexes personal data with one master key."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != KEY_BYTES:
            raise PiiKeyError(f"a PII key must be {KEY_BYTES} bytes")
        keys = HKDF(master_key, KEY_BYTES, _HKDF_SALT, SHA256, num_keys=2, context=b"kzpool personal data")
        assert isinstance(keys, (list, tuple))      # num_keys=2: two separate keys
        self._enc_key: bytes = keys[0]
        self._index_key: bytes = keys[1]
        key_id = HKDF(master_key, KEY_ID_BYTES, _HKDF_SALT, SHA256, context=b"kzpool personal data key id")
        assert isinstance(key_id, bytes)
        self.key_id: str = key_id.hex()

    def __repr__(self) -> str:          # keep keys out of tracebacks and debug dumps
        return f"PiiBox(<key hidden>, key_id={self.key_id})"

    def encrypt(self, plain: str, field: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        cipher = AES.new(self._enc_key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_BYTES)
        cipher.update(field.encode())
        ciphertext, tag = cipher.encrypt_and_digest(plain.encode())
        return BLOB_VERSION + nonce + ciphertext + tag

    def decrypt(self, blob: bytes, field: str) -> str:
        if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[:1] != BLOB_VERSION:
            raise PiiDecryptError(f"{field}: not a kzpool PII blob")
        nonce, body = blob[1:1 + NONCE_BYTES], blob[1 + NONCE_BYTES:]
        cipher = AES.new(self._enc_key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_BYTES)
        cipher.update(field.encode())
        try:
            return cipher.decrypt_and_verify(body[:-TAG_BYTES], body[-TAG_BYTES:]).decode()
        except ValueError:
            raise PiiDecryptError(f"{field}: does not decrypt with this key (wrong key or altered data)") from None

    def index(self, plain: str, kind: str = "iin_bin") -> bytes:
        """The lookup key of a value: equal for equal values of one kind, useless without the key."""
        return hmac.new(self._index_key, kind.encode() + b"\x00" + plain.encode(), sha256).digest()


def _read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise PiiKeyError(f"PII key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("event=pii_key_file_permissions path=%s mode=%o advice=chmod_600", path, mode & 0o777)
    return parse_key(data)


def load_key_file(path: str | Path) -> PiiBox:
    """A box with the key of one file (`kzpool licences rotate-pii-key --new-key-file`)."""
    return PiiBox(_read_key_file(Path(path)))


def create_key_file(path: Path) -> None:
    """A new random key, readable by the owner only (created atomically: never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(KEY_BYTES).hex() + "\n")


def load_pii_box(key_file: str = "", environ: Mapping[str, str] | None = None, *,
                 allow_demo_key: bool = False, demo_key_path: str = DEMO_KEY_PATH) -> PiiBox:
    """The key from KZPOOL_PII_KEY, else `key_file`, else (demo mode only) a key file under ./var/
    created on first use. Production with neither fails with PiiKeyError."""
    env = os.environ if environ is None else environ
    if env.get(ENV_KEY):
        log.info("event=pii_key source=environment")
        return PiiBox(parse_key(env[ENV_KEY].encode()))
    if key_file:
        log.info("event=pii_key source=file path=%s", key_file)
        return PiiBox(_read_key_file(Path(key_file)))
    if not allow_demo_key:
        raise PiiKeyError(f"no PII key: set compliance.pii_key_file or {ENV_KEY} "
                          "(32 bytes: raw, hex or base64)")
    path = Path(demo_key_path)
    if not path.exists():
        try:
            create_key_file(path)
            log.warning("event=pii_key_created path=%s note=demo_key_not_for_production", path)
        except FileExistsError:
            pass      # another process created it first: use theirs
    return PiiBox(_read_key_file(path))
