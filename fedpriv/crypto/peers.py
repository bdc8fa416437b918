"""End-to-end encryption between peers, so a relay forwards what it cannot read.

Each peer makes an X25519 key pair and publishes the public half. Two peers derive the
same 256-bit key from their Diffie-Hellman secret with HKDF-SHA256 and seal payloads
with ChaCha20-Poly1305 (all from ``cryptography``). The associated data binds a sealed
payload to its sender, recipient and round, so a relay cannot replay it in another
round or redirect it; any change to a sealed payload makes opening fail.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

NONCE_BYTES = 12
#: Bytes a sealed payload adds: nonce and authentication tag.
OVERHEAD = NONCE_BYTES + 16


def new_private_key() -> bytes:
    """A fresh X25519 private key (32 bytes, kept by its peer)."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private: bytes) -> bytes:
    """The public half of ``private`` (32 bytes, published through the relay)."""
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _aead(private: bytes, peer_public: bytes) -> ChaCha20Poly1305:
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedpriv-peers-v1").derive(
        shared
    )
    return ChaCha20Poly1305(key)


def _context(sender: int, recipient: int, label: str) -> bytes:
    return f"{sender}->{recipient}:{label}".encode()


def seal(
    payload: bytes, private: bytes, peer_public: bytes, sender: int, recipient: int, label: str
) -> bytes:
    """``payload`` encrypted and authenticated for ``recipient`` (label: e.g. the round)."""
    nonce = os.urandom(NONCE_BYTES)
    aead = _aead(private, peer_public)
    return nonce + aead.encrypt(nonce, payload, _context(sender, recipient, label))


def open_sealed(
    sealed: bytes, private: bytes, peer_public: bytes, sender: int, recipient: int, label: str
) -> bytes:
    """The payload of ``sealed``; ``ValueError`` if it was altered, replayed or misdirected."""
    aead = _aead(private, peer_public)
    try:
        return aead.decrypt(
            sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _context(sender, recipient, label)
        )
    except InvalidTag:
        raise ValueError(
            f"payload from peer {sender} to peer {recipient} ({label}) does not authenticate"
        ) from None
