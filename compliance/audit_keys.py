"""The audit log's Ed25519 signing key: a PKCS#8 PEM file readable by its owner only (0600).

The public key is shown as 64 hex digits (the raw RFC 8032 key, what an auditor copies) or as PEM.
A key is named in checkpoints by its key id: the first 8 bytes of SHA-256 of the raw public key,
in hex, so a verifier can say which key signed when it is not the expected one.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

log = logging.getLogger("kzpool.audit")

DEFAULT_KEY_FILE = "./var/audit-ed25519.pem"
KEY_FILE_MODE = 0o600
RAW_PUBLIC_KEY_BYTES = 32


class AuditKeyError(Exception):
    """The key file is missing, unreadable, too widely readable, or not an Ed25519 key."""


class AuditKeyMissing(AuditKeyError):
    pass


def key_id_of(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).digest()[:8].hex()


@dataclass(frozen=True, slots=True)
class PublicKey:
    raw: bytes

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def key_id(self) -> str:
        return key_id_of(self.raw)

    @property
    def pem(self) -> str:
        return eddsa.import_public_key(self.raw).export_key(format="PEM")

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            eddsa.new(eddsa.import_public_key(self.raw), "rfc8032").verify(message, signature)
            return True
        except ValueError:
            return False


class SigningKey:
    """The private key in memory; never logged, never printed."""

    def __init__(self, key: ECC.EccKey) -> None:
        if key.curve != "Ed25519" or not key.has_private():
            raise AuditKeyError("the audit key must be an Ed25519 private key")
        self._signer = eddsa.new(key, "rfc8032")
        self.public = PublicKey(key.public_key().export_key(format="raw"))

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        return self._signer.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id})"


def generate_key_file(path: str | Path, *, overwrite: bool = False) -> SigningKey:
    """Create a new key at `path` (mode 0600, directory created 0700). An existing key is never
    replaced unless `overwrite`: losing it would orphan every checkpoint it signed."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ECC.generate(curve="Ed25519")
    pem = key.export_key(format="PEM").encode("ascii")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, KEY_FILE_MODE)
    except FileExistsError:
        raise AuditKeyError(f"{path} already exists; refusing to replace an audit key") from None
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), KEY_FILE_MODE)   # O_CREAT's mode is masked by umask; this is not
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())
    signing = SigningKey(key)
    log.info("event=audit_key_created path=%s key_id=%s", path, signing.key_id)
    return signing


def load_signing_key(path: str | Path) -> SigningKey:
    """Load the private key; refuse a file that group or others may read (like ssh does)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_text("ascii")
    except FileNotFoundError:
        raise AuditKeyMissing(f"audit key file {path} does not exist; create it with "
                              "`kzpool audit keygen`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditKeyError(f"audit key file {path} cannot be read: {exc}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise AuditKeyError(f"audit key file {path} has mode {stat.S_IMODE(mode):04o}; "
                            f"it must be readable by its owner only (chmod 600 {path})")
    try:
        return SigningKey(ECC.import_key(data))
    except (ValueError, IndexError, TypeError) as exc:
        raise AuditKeyError(f"audit key file {path} is not an Ed25519 private key: {exc}") from None


def load_or_create_signing_key(path: str | Path, *, create_if_missing: bool) -> SigningKey:
    """The key at `path`; when it is missing, a new one if `create_if_missing` (the embedded demo
    default) or AuditKeyMissing (production refuses to start without its key)."""
    try:
        return load_signing_key(path)
    except AuditKeyMissing:
        if not create_if_missing:
            raise
    return generate_key_file(path)


def parse_public_key(text: str) -> PublicKey:
    """A public key given as 64 hex digits, a PEM block, or the path of a file holding either."""
    text = text.strip()
    if len(text) == 2 * RAW_PUBLIC_KEY_BYTES:
        try:
            return PublicKey(bytes.fromhex(text))
        except ValueError:
            pass
    if "-----BEGIN" not in text:
        path = Path(text)
        if not path.is_file():
            raise AuditKeyError(f"{text!r} is neither 64 hex digits, a PEM public key, nor a file")
        return parse_public_key(path.read_text("ascii"))
    try:
        key = ECC.import_key(text)
    except (ValueError, IndexError, TypeError) as exc:
        raise AuditKeyError(f"not an Ed25519 public key: {exc}") from None
    if key.curve != "Ed25519":
        raise AuditKeyError(f"not an Ed25519 public key (curve {key.curve})")
    return PublicKey(key.public_key().export_key(format="raw"))
