"""The platform's Ed25519 signing key (PyNaCl), loaded from a file — never from the database.

The file holds the 32-byte seed as 64 hex characters. In dev mode a missing key
is generated with mode 0600; in production a missing or loosely-permissioned
key file is a startup error, because a signature anyone could forge proves nothing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey


class SigningKeyError(RuntimeError):
    pass


class Signer:
    def __init__(self, key: SigningKey) -> None:
        self._key = key
        self.public_key_hex = key.verify_key.encode().hex()

    @classmethod
    def generate(cls) -> Signer:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed_hex(cls, seed_hex: str) -> Signer:
        return cls(SigningKey(bytes.fromhex(seed_hex.strip())))

    def sign(self, message: bytes) -> str:
        """Detached signature, hex."""
        return self._key.sign(message).signature.hex()


def verify_signature(public_key_hex: str, message: bytes, signature_hex: str) -> bool:
    """Offline check of a detached signature (constant-time inside libsodium)."""
    try:
        VerifyKey(bytes.fromhex(public_key_hex)).verify(message, bytes.fromhex(signature_hex))
        return True
    except (BadSignatureError, ValueError):
        return False


def load_signer(path: Path, *, create: bool) -> Signer:
    if not path.exists():
        if not create:
            raise SigningKeyError(
                f"signing key {path} not found; create one with `meterline ledger keygen {path}` "
                "or set METERLINE_SIGNING_KEY_FILE"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        signer = Signer.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(signer._key.encode().hex() + "\n")
        return signer
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077 and not create:
        raise SigningKeyError(f"signing key {path} is readable by others (mode {oct(mode)}); chmod 600 it")
    try:
        return Signer.from_seed_hex(path.read_text())
    except ValueError as exc:
        raise SigningKeyError(f"signing key {path} is not a 64-hex-character Ed25519 seed") from exc
