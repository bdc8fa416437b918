"""Shamir shares of whole vectors over a prime field, for masks that must add up over
any set of updates (FedBuff under ``crypto=ckks_secagg``: :mod:`fedpriv.crypto.secagg_buffer`).

A vector ``z`` of integers mod :data:`PRIME` is the constant term of a random polynomial
of degree ``threshold - 1`` per element; node ``x`` (1, 2, ...) holds its value at
``x``. Any ``threshold`` shares give ``z`` back by Lagrange interpolation at 0, and any
``threshold - 1`` are uniformly random whatever ``z`` is (Shamir 1979). Shares are
linear: ``Σ w_i·share_x(z_i)`` is a share of ``Σ w_i·z_i``, which is what lets a buffer
of masked updates be unmasked with one decoding and no single mask ever rebuilt.

Why not a library's: PyCryptodome's Shamir (which ``crypto=ckks_secagg``'s seeds use)
shares 16-byte secrets over GF(2^128), where a weighted sum of shares is not a share of
a weighted sum of integers. This is the textbook construction over GF(p) in NumPy's
uint64 arithmetic: ``p < 2^32``, so every product of two field elements fits in 64 bits.
Randomness comes from ``os.urandom``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

#: The largest prime below 2^32.
PRIME = 4_294_967_291
_P = np.uint64(PRIME)
#: 2^64 mod PRIME, to fold 128 random bits into one field element.
_WRAP = np.uint64(pow(2, 64, PRIME))


def uniform(size: int) -> np.ndarray:
    """``size`` field elements from the OS's CSPRNG: 128 random bits folded mod p each,
    so the distance from uniform is below 2^-96 per element."""
    words = np.frombuffer(os.urandom(16 * size), dtype=np.uint64).reshape(size, 2)
    return ((words[:, 0] % _P) * _WRAP + words[:, 1] % _P) % _P


def split(secret: np.ndarray, threshold: int, holders: int, pieces: int = 1) -> list[np.ndarray]:
    """Shares of ``secret`` (field elements) at x = 1..holders, each 1/``pieces`` of its
    length: the secret cut into ``pieces`` rows and ``threshold - 1`` random rows are the
    coefficients of a polynomial (row c multiplies x^c). Any ``threshold - 1 + pieces``
    shares rebuild the secret; any ``threshold - 1`` reveal nothing (LightSecAgg's coded
    shares; ``pieces=1`` is Shamir's scheme)."""
    if not (threshold >= 1 and pieces >= 1 and threshold - 1 + pieces <= holders < 1 << 16):
        raise ValueError(
            f"threshold={threshold}, pieces={pieces} of holders={holders}: need t >= 1, "
            "pieces >= 1 and t - 1 + pieces <= n < 65536"
        )
    width = -(-len(secret) // pieces)
    padded = np.zeros(width * pieces, dtype=np.uint64)
    padded[: len(secret)] = secret
    rows = [*padded.reshape(pieces, width), *(uniform(width) for _ in range(threshold - 1))]
    out = []
    for x in range(1, holders + 1):
        value = np.zeros(width, dtype=np.uint64)
        for row in reversed(rows):  # Horner: products stay below 2^48
            value = (value * np.uint64(x) + row) % _P
        out.append(value)
    return out


def combine(
    shares: Mapping[int, np.ndarray], threshold: int, pieces: int = 1, size: int | None = None
) -> np.ndarray:
    """The secret (its first ``size`` elements) from shares by holder x (1-based) of a
    :func:`split` with these ``threshold`` and ``pieces``: the first
    ``threshold - 1 + pieces`` of them are used. ValueError with fewer."""
    needed = threshold - 1 + pieces
    xs = sorted(shares)
    if len(set(xs)) != len(xs) or (xs and xs[0] < 1):
        raise ValueError(f"shares at x={xs}: need distinct x >= 1")
    if len(xs) < needed:
        raise ValueError(f"{len(xs)} shares; rebuilding needs threshold - 1 + pieces = {needed}")
    xs = xs[:needed]
    inverse = _inverse([[pow(x, c, PRIME) for c in range(needed)] for x in xs])
    rows = []
    for c in range(pieces):
        row = np.zeros(len(shares[xs[0]]), dtype=np.uint64)
        for x, weight in zip(xs, inverse[c], strict=True):
            row = (row + shares[x].astype(np.uint64) * np.uint64(weight) % _P) % _P
        rows.append(row)
    return np.concatenate(rows)[:size]


def _inverse(matrix: list[list[int]]) -> list[list[int]]:
    """The inverse of a square matrix over GF(p), by Gauss-Jordan on Python integers."""
    n = len(matrix)
    rows = [[*row, *(int(i == j) for j in range(n))] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if rows[r][col] % PRIME)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        scale = pow(rows[col][col], -1, PRIME)
        rows[col] = [v * scale % PRIME for v in rows[col]]
        for r in range(n):
            if r != col and rows[r][col]:
                factor = rows[r][col]
                rows[r] = [
                    (v - factor * w) % PRIME for v, w in zip(rows[r], rows[col], strict=True)
                ]
    return [row[n:] for row in rows]


def weighted_sum(vectors: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
    """``Σ w_i·v_i`` mod p (weights are field elements: integers in [0, p))."""
    if len(vectors) != len(weights) or not vectors:
        raise ValueError(f"{len(vectors)} vectors and {len(weights)} weights")
    total = np.zeros(len(vectors[0]), dtype=np.uint64)
    for vector, weight in zip(vectors, weights, strict=True):
        if not 0 <= weight < PRIME:
            raise ValueError(f"weight {weight} is not a field element (0 <= w < {PRIME})")
        total = (total + vector.astype(np.uint64) * np.uint64(weight) % _P) % _P
    return total


def to_field(units: np.ndarray) -> np.ndarray:
    """Signed integers to field elements (negatives wrap to p - |x|)."""
    return np.mod(units.astype(np.int64), np.int64(PRIME)).astype(np.uint64)


def from_field(residues: np.ndarray) -> np.ndarray:
    """Field elements back to signed integers: those above p/2 are negative."""
    signed = residues.astype(np.int64)
    signed[signed > PRIME // 2] -= PRIME
    return signed
