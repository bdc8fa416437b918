"""Multi-party private set intersection by commutative masking (ECDH-PSI).

Each party hashes its IDs to points of the prime-order subgroup of edwards25519 and
masks them with a secret scalar: ``H(id)^k``. Masks commute, so once every party's
scalar has been applied to a set, equal IDs give equal points no matter whose set they
came from, while a point reveals nothing about its ID to anyone lacking the scalars
(decisional Diffie-Hellman). The coordinator passes each set around the ring of
parties, intersects the fully masked sets, and tells each party which of *its own*
rows are in the intersection, in an order nobody chose (sorted masked points).

All curve arithmetic is libsodium's (via PyNaCl): hash-to-curve by Elligator 2
(``crypto_core_ed25519_from_uniform``, main subgroup) and scalar multiplication
without clamping. PyNaCl has no ristretto255 bindings; these are the ed25519
equivalents, with received points checked to lie in the main subgroup.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Hashable, Sequence

import numpy as np
from nacl import bindings as sodium

#: Bytes of one encoded point.
POINT_BYTES = 32
#: Domain separation: the same ID hashes differently in any other protocol.
DOMAIN = b"fedpriv-psi-v1:"


def new_key() -> bytes:
    """A uniformly random non-zero scalar modulo the group order."""
    return sodium.crypto_core_ed25519_scalar_reduce(os.urandom(64))


def mask_ids(ids: Sequence[str], key: bytes) -> np.ndarray:
    """``H(id)^key`` for each ID, as an ``(n, 32)`` uint8 array in the same order."""
    out = np.empty((len(ids), POINT_BYTES), np.uint8)
    for row, entity in enumerate(ids):
        digest = hashlib.sha512(DOMAIN + entity.encode()).digest()[:POINT_BYTES]
        point = sodium.crypto_core_ed25519_from_uniform(digest)
        out[row] = np.frombuffer(sodium.crypto_scalarmult_ed25519_noclamp(key, point), np.uint8)
    return out


def remask(points: np.ndarray, key: bytes) -> np.ndarray:
    """Apply another party's mask to every point (order kept).

    Raises ``ValueError`` naming the first row that is not a point of the main
    subgroup: such a point could leak bits of ``key``.
    """
    if points.ndim != 2 or points.shape[1] != POINT_BYTES or points.dtype != np.uint8:
        raise ValueError(
            f"masked IDs must be an (n, {POINT_BYTES}) uint8 array, got {points.shape} "
            f"{points.dtype}"
        )
    out = np.empty_like(points)
    for row, point in enumerate(points):
        encoded = point.tobytes()
        if not sodium.crypto_core_ed25519_is_valid_point(encoded):
            raise ValueError(f"row {row} is not a valid point of the prime-order subgroup")
        out[row] = np.frombuffer(sodium.crypto_scalarmult_ed25519_noclamp(key, encoded), np.uint8)
    return out


def align(sets: Sequence[Sequence[Hashable]]) -> list[np.ndarray]:
    """For each party, the positions in its own set of the elements every set has,
    all in one common order (sorted by element). Duplicates within a set are an error.

    Used by the coordinator on fully masked sets (element = the masked bytes), and on
    plain IDs when PSI is off.
    """
    positions = []
    for party, elements in enumerate(sets):
        where = {element: row for row, element in enumerate(elements)}
        if len(where) != len(elements):
            raise ValueError(f"party {party} submitted {len(elements) - len(where)} duplicate IDs")
        positions.append(where)
    common = sorted(set.intersection(*(set(where) for where in positions)))  # type: ignore[type-var]
    return [np.array([where[e] for e in common], np.int64) for where in positions]


def as_elements(points: np.ndarray) -> list[bytes]:
    """Rows of a masked-ID array as hashable bytes."""
    return [row.tobytes() for row in points]
