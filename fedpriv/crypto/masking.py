"""Pairwise masks with Shamir-shared keys (Bonawitz et al., CCS 2017, "Practical Secure
Aggregation for Privacy-Preserving Machine Learning"), from existing primitives only.

Each client ``u`` adds to its quantized update ``q_u`` (integers mod ``M = 2^bits``) a
self mask ``PRG(b_u)`` and, for every other client ``v`` of the round, ``±PRG(s_uv)``,
where ``s_uv`` is the ECDH agreement of their mask keys (``+`` if ``u < v``). In the sum
of all clients the pairwise masks cancel; the self masks and the masks shared with
clients that dropped out are removed with secrets rebuilt from ``t`` Shamir shares. Any
``t - 1`` clients, even with everything the server holds, cannot rebuild a secret.

The parts: ECDH on SECP384R1 and PEM key encoding (Flower's
``flwr.supercore.primitives.asymmetric``), Fernet channels keyed by ECDH + HKDF
(Flower's ``symmetric_encryption``), Shamir over GF(2^128) (Flower's ``shamir``,
PyCryptodome), and the masks' PRG: ChaCha20's keystream (``cryptography``) keyed by
HKDF-SHA256 of the seed and the round. Flower's own ``pseudo_rand_gen`` is not used: it
folds the seed to 32 bits and draws from NumPy's Mersenne Twister, which a coalition
could search exhaustively.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.crypto import shamir, symmetric_encryption
from flwr.supercore.primitives import asymmetric

#: Bytes of a self-mask seed.
SEED_BYTES = 32


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """One ECDH key pair, PEM-encoded (the secret never leaves its node whole)."""

    secret: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        secret, public = asymmetric.generate_key_pairs()
        return cls(asymmetric.private_key_to_bytes(secret), asymmetric.public_key_to_bytes(public))


def agree(secret: bytes, public: bytes) -> bytes:
    """The 32-byte key two nodes share: ECDH of one's secret and the other's public key,
    through HKDF (base64, as Fernet wants it)."""
    return symmetric_encryption.generate_shared_key(
        asymmetric.bytes_to_private_key(secret), asymmetric.bytes_to_public_key(public)
    )


def seal(key: bytes, header: tuple[int, ...], payload: bytes) -> bytes:
    """``payload`` encrypted and authenticated for one peer, bound to ``header``
    (source, destination, round...): a relayed share cannot be replayed elsewhere."""
    head = b"".join(int(x).to_bytes(8, "little", signed=False) for x in header)
    return symmetric_encryption.encrypt(key, head + payload)


def unseal(key: bytes, header: tuple[int, ...], token: bytes) -> bytes:
    """The payload of :func:`seal`; ValueError if forged, tampered or misaddressed."""
    try:
        plain = symmetric_encryption.decrypt(key, token)
    except Exception as error:  # cryptography.fernet.InvalidToken and malformed tokens
        raise ValueError("a share that does not decrypt under the pair's key") from error
    head = b"".join(int(x).to_bytes(8, "little", signed=False) for x in header)
    if not plain.startswith(head):
        raise ValueError(f"a share addressed to another (source, destination, round): {header}")
    return plain[len(head) :]


def split(secret: bytes, threshold: int, holders: int) -> list[bytes]:
    """``holders`` Shamir shares of ``secret``; any ``threshold`` of them rebuild it."""
    return shamir.create_shares(secret, threshold, holders)


def combine(shares: list[bytes]) -> bytes:
    """The secret from shares (garbage or ValueError if fewer than the threshold)."""
    return shamir.combine_shares(shares)


def new_seed() -> bytes:
    return os.urandom(SEED_BYTES)


def stream(seed: bytes, label: bytes, server_round: int, size: int, bits: int) -> np.ndarray:
    """``size`` pseudorandom integers in [0, 2^bits): ChaCha20's keystream, keyed by
    HKDF(seed) for this round and purpose, so no two rounds reuse a mask."""
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"fedpriv-mask/" + label + server_round.to_bytes(8, "little"),
    ).derive(seed)
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(encryptor.update(bytes(8 * size)), dtype=np.uint64)
    return words & np.uint64((1 << bits) - 1)


def pair_mask(
    agreed: bytes, me: int, peer: int, server_round: int, size: int, bits: int
) -> np.ndarray:
    """What ``me`` adds for the pair (me, peer) (mod 2^bits): ``+m`` if me < peer, else
    ``-m``, so the pair's masks cancel in a sum."""
    mask = stream(agreed, b"pair", server_round, size, bits)
    return mask if me < peer else (np.uint64(1 << bits) - mask) & np.uint64((1 << bits) - 1)


def self_mask(seed: bytes, server_round: int, size: int, bits: int) -> np.ndarray:
    return stream(seed, b"self", server_round, size, bits)


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """Fixed-point integers mod 2^bits for pre-weighted values ``n_k·x``.

    ``step``: the value of one unit. A sum of ``n`` clients' integers is exact while its
    magnitude stays below 2^(bits-1) units; the weighted mean is then off by at most
    ``n·step/2 / Σ n_k`` (rounding), ≤ step/2 when every weight is >= 1.
    """

    bits: int
    step: float

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Values to integers mod 2^bits (two's complement for negatives)."""
        units = np.rint(values / self.step).astype(np.int64)
        return units.astype(np.uint64) & np.uint64(self.modulus - 1)

    def decode(self, residues: np.ndarray) -> np.ndarray:
        """Integers mod 2^bits back to values (those >= 2^(bits-1) are negative)."""
        residues = residues.astype(np.uint64) & np.uint64(self.modulus - 1)
        signed = residues.astype(np.int64)
        signed[signed >= self.modulus // 2] -= self.modulus
        return signed.astype(np.float64) * self.step

    def largest(self, clients: int) -> float:
        """The largest |n_k·x| one of ``clients`` may send: their sum must not wrap."""
        return (self.modulus // 2 - 1) * self.step / clients
