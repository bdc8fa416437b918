"""CKKS parameters, keys and ciphertext operations (TenSEAL).

Who holds what: every client holds one shared *secret* context (parameters and the
secret key); the server holds a *public* context made of the parameters alone — no
secret key, no public, relinearization or Galois keys. Aggregation is addition, which
needs none of them. Clients encrypt with the secret key (SEAL's symmetric encryption):
every encryptor here is also a decryptor, and symmetric encryption is twice as fast as
public-key encryption with half the noise. The server thus cannot decrypt, and cannot
forge a ciphertext either.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedpriv.crypto.fingerprint import server_context, split_server_context
from fedpriv.crypto.parallel import map_spans, sum_leaving_out

#: Largest total coefficient-modulus bits that keep 128-bit security, by polynomial
#: modulus degree (HomomorphicEncryption.org standard, ternary secrets; SEAL enforces it).
MAX_MODULUS_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
#: log2 of the decryption error of a fresh ciphertext, in units of the scale (measured:
#: ~2^9 for symmetric encryption; 2^12 leaves room for sums over clients).
NOISE_BITS = 12
#: Finest scale allowed: 2^(NOISE_BITS - 32) ≈ 1e-6 absolute error before averaging.
MIN_SCALE_BITS = 32
#: Coarsest integer room allowed: pre-weighted sums n_k·x up to 2^20 ≈ 1e6.
MIN_INTEGER_BITS = 20


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named, 128-bit-secure parameter set."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    why: str


PRESETS = {
    "ckks-128": Preset(
        4096,
        (60, 49),
        36,
        "one 60-bit data prime (no rescale level: aggregation only adds), 2048 slots; "
        "the 49-bit prime is SEAL's key-switching prime and never reaches a ciphertext",
    ),
    "ckks-128-n8192": Preset(
        8192,
        (60, 40, 40, 60),
        40,
        "the common setting with two rescale levels; 3x the bytes of ckks-128 for nothing "
        "aggregation uses, kept for comparison",
    ),
    "ckks-128-async": Preset(
        4096,
        (60, 29, 20),
        36,
        "ckks-128 with one rescale level: FedBuff's server multiplies each update by its "
        "plaintext staleness weight (encoded at the 29-bit prime) and rescales, which leaves "
        "the 60-bit prime's 23 integer bits; the 20-bit last prime is SEAL's key-switching "
        "prime, unused (no evaluation keys). Updates up: 3.13x float32 seeded (ckks-128: "
        "2.01x); the offset down is one level lower: 4.01x, as ckks-128's state",
    ),
}


@dataclasses.dataclass(frozen=True)
class CkksParams:
    """Resolved CKKS parameters (a preset with any explicit overrides applied)."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        """Real values per TenSEAL ciphertext (one per slot)."""
        return self.poly_modulus_degree // 2

    @property
    def packed_values(self) -> int:
        """Real values per packed ciphertext (two per slot, :mod:`fedpriv.crypto.packed`)."""
        return self.poly_modulus_degree

    @property
    def data_bits(self) -> int:
        """Bits of the modulus a fresh ciphertext lives under (all primes but SEAL's last,
        special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def max_abs_value(self) -> float:
        """The largest magnitude a ciphertext slot holds without wrapping around."""
        return 2.0 ** (self.data_bits - self.scale_bits - 1)

    @property
    def rescale_levels(self) -> int:
        """Plaintext multiplies a fresh ciphertext can take, each followed by a rescale
        that drops one data prime (the first data prime is never dropped)."""
        return max(0, len(self.coeff_mod_bit_sizes) - 2)

    @property
    def max_abs_rescaled(self) -> float:
        """:attr:`max_abs_value` one rescale down (its last data prime dropped)."""
        return 2.0 ** (self.data_bits - self.coeff_mod_bit_sizes[-2] - self.scale_bits - 1)

    def problems(self) -> list[tuple[str, str]]:
        """Why these parameters are not 128-bit secure or cannot hold the precision."""
        n, bits = self.poly_modulus_degree, self.coeff_mod_bit_sizes
        if n not in MAX_MODULUS_BITS_128:
            return [("poly_modulus_degree", f"must be one of {sorted(MAX_MODULUS_BITS_128)}")]
        out = []
        if len(bits) < 2:
            out.append(
                ("coeff_mod_bit_sizes", "needs >= 2 primes: TenSEAL reserves the last for SEAL")
            )
        if any(not 20 <= b <= 60 for b in bits):
            out.append(("coeff_mod_bit_sizes", "each prime must have 20 to 60 bits"))
        if sum(bits) > MAX_MODULUS_BITS_128[n]:
            out.append(
                (
                    "coeff_mod_bit_sizes",
                    f"sum to {sum(bits)} bits, which is not 128-bit secure: "
                    f"poly_modulus_degree={n} allows at most {MAX_MODULUS_BITS_128[n]} "
                    "(HomomorphicEncryption.org standard); raise poly_modulus_degree or "
                    "use fewer or smaller primes",
                )
            )
        if self.scale_bits < MIN_SCALE_BITS:
            out.append(
                (
                    "scale_bits",
                    f"must be >= {MIN_SCALE_BITS}: decryption error is about "
                    f"2^({NOISE_BITS} - scale_bits) = {2.0 ** (NOISE_BITS - self.scale_bits):.1e}"
                    ", above the 1e-6 aggregation needs",
                )
            )
        integer_bits = self.data_bits - self.scale_bits - 1
        if len(bits) >= 2 and integer_bits < MIN_INTEGER_BITS:
            out.append(
                (
                    "scale_bits",
                    f"leaves {integer_bits} bits for the integer part of a slot (data primes "
                    f"{list(bits[:-1])} minus the scale); pre-weighted sums need >= "
                    f"{MIN_INTEGER_BITS}: lower scale_bits or use a larger first prime",
                )
            )
        return out


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """The two serialized TenSEAL contexts of one key set."""

    #: For clients: the parameters and the secret key.
    secret: bytes
    #: For the server: the parameters alone, headed by the key set's fingerprint
    #: (:mod:`fedpriv.crypto.fingerprint`).
    public: bytes


def _new_context(params: CkksParams, public_key: bool) -> Any:
    """A fresh TenSEAL context with a new secret key (and a public key if asked)."""
    import tenseal as ts

    mode = ts.ENCRYPTION_TYPE.ASYMMETRIC if public_key else ts.ENCRYPTION_TYPE.SYMMETRIC
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=mode,
        n_threads=1,
    )
    context.global_scale = 2.0**params.scale_bits
    return context


#: Addition needs neither rotations nor relinearization: their keys are never saved.
NO_EVALUATION_KEYS = {"save_galois_keys": False, "save_relin_keys": False}


def make_keys(params: CkksParams) -> KeyPair:
    """A fresh secret key and the two contexts that go with it."""
    context = _new_context(params, public_key=False)
    secret = context.serialize(save_secret_key=True, **NO_EVALUATION_KEYS)
    public = context.serialize(save_secret_key=False, **NO_EVALUATION_KEYS)
    return KeyPair(secret=secret, public=server_context(public, secret))


@dataclasses.dataclass(frozen=True)
class SplitKeys:
    """Three serialized contexts for vertical learning, where encryptors must not decrypt."""

    #: For the label owner: the parameters and the secret key (None at a passive
    #: party of a fleet, whose bundle holds no secret).
    secret: bytes | None
    #: For the other parties: the parameters and the public key (encrypt only).
    encrypt: bytes
    #: For the coordinator: the parameters alone (add only).
    evaluate: bytes


def make_split_keys(params: CkksParams) -> SplitKeys:
    """A fresh key pair for public-key encryption (SEAL's asymmetric mode)."""
    context = _new_context(params, public_key=True)
    keep = NO_EVALUATION_KEYS
    return SplitKeys(
        secret=context.serialize(save_secret_key=True, save_public_key=False, **keep),
        encrypt=context.serialize(save_secret_key=False, save_public_key=True, **keep),
        evaluate=context.serialize(save_secret_key=False, save_public_key=False, **keep),
    )


def load_context(data: bytes, scale_bits: int) -> Any:
    """The TenSEAL context serialized in ``data``, a server's context headed by its key
    fingerprint or not (cached per process, see :class:`_ContextCache`)."""
    return _CONTEXTS.get(split_server_context(data)[1], scale_bits)


class _ContextCache:
    """This process's last few loaded contexts.

    A forked worker must not use its parent's contexts, whose thread pools did not
    survive the fork, and must not destroy them either: the destructor waits on those
    pools forever (a worker that evicted one from an lru_cache hung). So a child starts
    its own cache and keeps the inherited one alive, untouched, until it exits.
    """

    SIZE = 8

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.contexts: dict[tuple[bytes, int], Any] = {}
        self.inherited: list[dict[tuple[bytes, int], Any]] = []

    def get(self, data: bytes, scale_bits: int) -> Any:
        import tenseal as ts

        if self.pid != os.getpid():
            self.inherited.append(self.contexts)
            self.pid, self.contexts = os.getpid(), {}
        key = (data, scale_bits)
        if key not in self.contexts:
            if len(self.contexts) >= self.SIZE:  # this process's own: safe to destroy
                del self.contexts[next(iter(self.contexts))]
            context = ts.context_from(data, n_threads=1)
            context.global_scale = 2.0**scale_bits
            self.contexts[key] = context
        return self.contexts[key]


_CONTEXTS = _ContextCache()


def encrypt(secret: bytes, params: CkksParams, values: np.ndarray, workers: int = 1) -> list[bytes]:
    """``values`` (1-D) as serialized ciphertexts of ``params.slots`` values each
    (``secret``: a context with the secret key, or with the public key alone)."""
    slots = params.slots
    return map_spans(
        _encrypt,
        math.ceil(len(values) / slots),
        workers,
        lambda start, stop: (secret, params, values[start * slots : stop * slots]),
    )


def _encrypt(secret: bytes, params: CkksParams, values: np.ndarray) -> list[bytes]:
    import tenseal as ts

    context = load_context(secret, params.scale_bits)
    return [
        ts.ckks_vector(context, values[i : i + params.slots]).serialize()
        for i in range(0, len(values), params.slots)
    ]


def decrypt(
    secret: bytes, params: CkksParams, chunks: Sequence[bytes], workers: int = 1
) -> np.ndarray:
    """The values of serialized ciphertexts, concatenated (float64)."""
    parts = map_spans(
        _decrypt, len(chunks), workers, lambda start, stop: (secret, params, chunks[start:stop])
    )
    return np.concatenate(parts) if parts else np.zeros(0)


def _decrypt(secret: bytes, params: CkksParams, chunks: Sequence[bytes]) -> list[np.ndarray]:
    import tenseal as ts

    context = load_context(secret, params.scale_bits)
    return [np.asarray(ts.ckks_vector_from(context, chunk).decrypt()) for chunk in chunks]


def add(
    public: bytes,
    params: CkksParams,
    contributions: Sequence[Sequence[bytes]],
    sizes: Sequence[int],
    workers: int = 1,
) -> tuple[list[bytes], dict[int, str]]:
    """Chunk-wise sums of several parties' ciphertexts, using the public context only.

    ``contributions[k][i]`` is party ``k``'s ``i``-th ciphertext, which must hold
    ``sizes[i]`` values. A party with a ciphertext that does not load under these
    parameters, or has the wrong size or scale, is left out of the sum; the second
    result maps its index to the reason.
    """
    return sum_leaving_out(
        len(contributions),
        len(sizes),
        workers,
        lambda parties, start, stop: _add(
            public,
            params,
            [(k, contributions[k][start:stop]) for k in parties],
            sizes[start:stop],
            start,
        ),
    )


def _add(
    public: bytes,
    params: CkksParams,
    contributions: list[tuple[int, Sequence[bytes]]],
    sizes: Sequence[int],
    first: int,
) -> list[tuple[bytes | None, dict[int, str]]]:
    import tenseal as ts

    context = load_context(public, params.scale_bits)
    out: list[tuple[bytes | None, dict[int, str]]] = []
    for i, size in enumerate(sizes):
        total, found = None, {}
        for k, chunks in contributions:
            try:
                vector = ts.ckks_vector_from(context, chunks[i])
                if vector.size() != size:
                    raise ValueError(f"holds {vector.size()} values, expected {size}")
                total = vector if total is None else total.add_(vector)
            except Exception as error:  # TenSEAL raises bare ValueError/TypeError/RuntimeError
                found[k] = f"ciphertext {first + i} rejected: {error}"
                break
        out.append((None if found or total is None else total.serialize(), found))
    return out
