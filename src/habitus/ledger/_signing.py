"""The habitat's Ed25519 key, and signing and checking checkpoints with it."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from habitus.errors import IntegrityError
from habitus.ledger._models import Checkpoint, checkpoint_message

__all__ = ["Signer", "check_checkpoint", "load_public_key"]


class Signer:
    """Holds the habitat's private key (a PEM file readable only by its owner)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key_hex = raw.hex()

    @classmethod
    def create(cls, path: Path) -> Signer:
        """Generate a new key and write it to ``path`` with mode 0600."""
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> Signer:
        """Read the key written by :meth:`create`."""
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"cannot read the habitat's signing key {str(path)!r}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise IntegrityError(f"the signing key {str(path)!r} is not an Ed25519 key")
        return cls(key)

    def sign(self, tree_size: int, root: bytes, ts: datetime) -> bytes:
        """Sign the checkpoint statement for ``(tree_size, root, ts)``."""
        return self._key.sign(checkpoint_message(tree_size, root, ts))


def load_public_key(hex_key: str) -> Ed25519PublicKey:
    """Parse a raw hex Ed25519 public key."""
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key))
    except ValueError as exc:
        raise IntegrityError(f"{hex_key!r} is not a hex Ed25519 public key: {exc}") from exc


def check_checkpoint(checkpoint: Checkpoint, public_key_hex: str | None = None) -> bool:
    """True if ``checkpoint`` is signed by ``public_key_hex`` (default: the key it names)."""
    key_hex = public_key_hex or checkpoint.public_key
    try:
        key = load_public_key(key_hex)
        key.verify(bytes.fromhex(checkpoint.signature), checkpoint.signed_bytes())
    except (InvalidSignature, ValueError, IntegrityError):
        return False
    return True
