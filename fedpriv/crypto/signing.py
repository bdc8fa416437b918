"""Ed25519 signatures (``cryptography``): a device signs what it sends through a server
that must not be able to speak for it, under a key whose public half every device holds
pinned, out of band, in its bundle of ``fedpriv keys init``."""

from __future__ import annotations

import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def new_key() -> bytes:
    """A fresh Ed25519 private key (32 bytes, kept by its device)."""
    return Ed25519PrivateKey.generate().private_bytes_raw()


def public_key(private: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def statement(*fields: object) -> bytes:
    """The bytes signed for ``fields`` (a purpose label first): JSON, so no two
    statements share an encoding. Bytes fields are hex."""
    return json.dumps(
        [f.hex() if isinstance(f, bytes) else f for f in fields], separators=(",", ":")
    ).encode()


def sign(private: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).sign(message)


def verify(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
