"""Horizontal aggregation's ciphertexts: two values per CKKS slot, in SEAL's own format.

TenSEAL's ``CKKSVector`` (:mod:`fedpriv.crypto.ckks`) puts one real value in each slot
and serializes both polynomials of a ciphertext: 8× the bytes of float32. CKKS slots
are complex, and sums and real scalings act on real and imaginary parts separately, so
a slot carries two values: half the ciphertexts. And SEAL's symmetric encryption can
save a ciphertext's second polynomial, which is uniformly random, as the seed of the
PRNG that drew it (``Encryptor.encrypt_symmetric`` returning a ``Serializable``): half
the bytes again, and SEAL draws the polynomial again from the seed when it loads the
ciphertext, which needs the parameters only, no key. Both through ``tenseal.sealapi``
(the SEAL that TenSEAL ships), so nothing here is new cryptography.

Format (:data:`fedpriv.crypto.records.PACKED_STYPE`): one SEAL ``Ciphertext`` save per
chunk of up to N values (N: ``poly_modulus_degree``); value ``2j`` is the real part of
slot ``j``, value ``2j + 1`` its imaginary part, an odd tail padded with a zero. How
many values a chunk holds is not in the ciphertext: the record says it (the ``Array``'s
shape).

``tenseal.sealapi`` saves and loads through file paths only, so each thread of each
process goes through one anonymous in-memory file (``memfd``) of its own.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedpriv.crypto.ckks import CkksParams, load_context
from fedpriv.crypto.parallel import map_spans, sum_leaving_out


class _File:
    """An anonymous in-memory file (a temporary one where there is no memfd: macOS),
    closed when dropped."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("fedpriv-ckks")
            self.path, self.temporary = f"/proc/self/fd/{self.fd}", False
        else:
            self.fd, self.path = tempfile.mkstemp(prefix="fedpriv-ckks-")
            self.temporary = True

    def __del__(self) -> None:
        if self.pid == os.getpid():  # a forked child leaves its parent's file alone
            os.close(self.fd)
            if self.temporary:
                os.unlink(self.path)


class _Scratch(threading.local):
    """This thread's file for SEAL's path-only save and load. Per thread, and per process:
    a forked child must not write its parent's."""

    file: _File | None = None

    def _file(self) -> _File:
        if self.file is None or self.file.pid != os.getpid():
            self.file = _File()
        return self.file

    def write(self, data: bytes) -> str:
        """``data`` as the file's whole content; its path."""
        file = self._file()
        os.pwrite(file.fd, data, 0)  # over the last content: its pages are reused
        os.ftruncate(file.fd, len(data))  # a short input must not be read with a stale tail
        return file.path

    def target(self) -> str:
        """The path to save to."""
        return self._file().path

    def read(self) -> bytes:
        """What was last saved."""
        fd = self._file().fd
        return os.pread(fd, os.fstat(fd).st_size, 0)


_SCRATCH = _Scratch()


class _Seal:
    """SEAL objects for one context in this process (``tenseal.sealapi``)."""

    def __init__(self, context_data: bytes, params: CkksParams) -> None:
        import tenseal.sealapi as sealapi

        context = load_context(context_data, params.scale_bits)
        self.api = sealapi
        self.context = context.seal_context().data
        self.scale = 2.0**params.scale_bits
        self.parms_id = self.context.first_parms_id()
        self.secret = context.secret_key().data if context.has_secret_key() else None

    def encoder(self) -> Any:
        return self.api.CKKSEncoder(self.context)

    def load(self, data: bytes) -> Any:
        """The ciphertext in ``data``, loaded and checked by SEAL against the parameters
        (a seeded one is expanded); raises with the reason if it is not one."""
        ciphertext = self.api.Ciphertext()
        ciphertext.load(self.context, _SCRATCH.write(data))
        return ciphertext

    def check(self, ciphertext: Any) -> None:
        """Refuse what loads but cannot be added to a fresh ciphertext of these parameters."""
        if ciphertext.size() != 2:
            raise ValueError(f"has {ciphertext.size()} polynomials, expected 2")
        if ciphertext.parms_id() != self.parms_id:
            raise ValueError("is not at the parameters' first level")
        if ciphertext.scale != self.scale:
            raise ValueError(f"has scale {ciphertext.scale:.6g}, expected {self.scale:.6g}")


def encrypt(
    secret: bytes, params: CkksParams, values: np.ndarray, workers: int = 1, *, seeded: bool = True
) -> list[bytes]:
    """``values`` (1-D) as packed ciphertexts of up to N values each, encrypted with the
    secret key in ``secret`` (``seeded``: half the bytes; the server draws the rest)."""
    per = params.packed_values
    return map_spans(
        _encrypt,
        math.ceil(len(values) / per),
        workers,
        lambda start, stop: (secret, params, values[start * per : stop * per], seeded),
        min_per_worker=32,
    )


def _encrypt(secret: bytes, params: CkksParams, values: np.ndarray, seeded: bool) -> list[bytes]:
    seal = _Seal(secret, params)
    if seal.secret is None:
        raise ValueError("packed CKKS encryption needs the clients' secret context")
    encryptor = seal.api.Encryptor(seal.context, seal.secret)
    encoder, plain, ciphertext = seal.encoder(), seal.api.Plaintext(), seal.api.Ciphertext()
    out = []
    for start in range(0, len(values), params.packed_values):
        chunk = np.array(values[start : start + params.packed_values], dtype=np.float64)
        if len(chunk) % 2:
            chunk = np.append(chunk, 0.0)
        encoder.encode(chunk.view(np.complex128).tolist(), seal.scale, plain)
        if seeded:
            encryptor.encrypt_symmetric(plain).save(_SCRATCH.target())
        else:
            encryptor.encrypt_symmetric(plain, ciphertext)
            ciphertext.save(_SCRATCH.target())
        out.append(_SCRATCH.read())
    return out


def decrypt(
    secret: bytes,
    params: CkksParams,
    chunks: Sequence[bytes],
    sizes: Sequence[int],
    workers: int = 1,
) -> np.ndarray:
    """The values of packed ciphertexts (``sizes[i]`` in chunk ``i``), concatenated
    (float64)."""
    parts = map_spans(
        _decrypt,
        len(chunks),
        workers,
        lambda start, stop: (secret, params, chunks[start:stop], sizes[start:stop]),
        min_per_worker=32,
    )
    return np.concatenate(parts) if parts else np.zeros(0)


def _decrypt(
    secret: bytes, params: CkksParams, chunks: Sequence[bytes], sizes: Sequence[int]
) -> list[np.ndarray]:
    seal = _Seal(secret, params)
    if seal.secret is None:
        raise ValueError("packed CKKS decryption needs the clients' secret context")
    decryptor = seal.api.Decryptor(seal.context, seal.secret)
    encoder, plain = seal.encoder(), seal.api.Plaintext()
    out = []
    for chunk, size in zip(chunks, sizes, strict=True):
        decryptor.decrypt(seal.load(chunk), plain)
        slots = np.asarray(encoder.decode_complex(plain), dtype=np.complex128)
        out.append(slots.view(np.float64)[:size].copy())
    return out


def add(
    public: bytes,
    params: CkksParams,
    contributions: Sequence[Sequence[bytes]],
    count: int,
    workers: int = 1,
) -> tuple[list[bytes], dict[int, str]]:
    """Chunk-wise sums of several parties' packed ciphertexts, with the server's
    context (parameters only).

    ``contributions[k][i]`` is party ``k``'s ``i``-th of ``count`` ciphertexts. A party
    with a ciphertext that SEAL does not load under these parameters, or that has the
    wrong level, scale or number of polynomials, is left out of the sum; the second
    result maps its index to the reason. Sums are saved expanded (a sum has no seed).
    """
    return sum_leaving_out(
        len(contributions),
        count,
        workers,
        lambda parties, start, stop: _add(
            public, params, [(k, contributions[k]) for k in parties], start, stop
        ),
    )


def _add(
    public: bytes,
    params: CkksParams,
    contributions: list[tuple[int, Sequence[bytes]]],
    start: int,
    stop: int,
) -> list[tuple[bytes | None, dict[int, str]]]:
    seal = _Seal(public, params)
    evaluator = seal.api.Evaluator(seal.context)
    out: list[tuple[bytes | None, dict[int, str]]] = []
    for i in range(start, stop):
        total, found = None, {}
        for k, chunks in contributions:
            try:
                ciphertext = seal.load(chunks[i])
                seal.check(ciphertext)
            except Exception as error:  # SEAL raises bare ValueError/RuntimeError
                found[k] = f"ciphertext {i} rejected: {error}"
                break
            if total is None:
                total = ciphertext
            else:
                evaluator.add_inplace(total, ciphertext)
        if found or total is None:
            out.append((None, found))
            continue
        total.save(_SCRATCH.target())
        out.append((_SCRATCH.read(), found))
    return out


class ScaledSum:
    """A running sum ``Σ c_k·x_k`` of packed ciphertexts ``x_k``, each ``c_k`` a plaintext
    real the server chose (FedBuff's staleness weight), kept in memory by the server.

    Each term costs one plaintext multiply and one rescale (SEAL's ``multiply_plain`` and
    ``rescale_to_next``): ``c`` is encoded at the scale of the prime the rescale drops, so
    a term comes out at the fresh ciphertexts' scale exactly, one level down, where every
    term and every earlier sum add. Needs the parameters only, no key of any kind; the
    parameters need a rescale level (:attr:`CkksParams.rescale_levels`).
    """

    def __init__(self, public: bytes, params: CkksParams, count: int) -> None:
        if params.rescale_levels < 1:
            raise ValueError(
                f"coeff_mod_bit_sizes={list(params.coeff_mod_bit_sizes)} leave no rescale "
                "level for a plaintext multiply; use the preset ckks-128-async"
            )
        self.seal = _Seal(public, params)
        self.evaluator = self.seal.api.Evaluator(self.seal.context)
        self.encoder = self.seal.encoder()
        first = self.seal.context.first_context_data()
        #: The prime the rescale drops: a factor encoded at this scale leaves the scale as is.
        self.prime = float(first.parms().coeff_modulus()[-1].value())
        self.level = first.next_context_data().parms_id()
        self.count = count
        self.totals: list[Any] | None = None
        #: Terms added since the last :meth:`clear`.
        self.terms = 0

    def add(self, chunks: Sequence[bytes], factor: float) -> None:
        """Add ``factor`` times the ciphertexts ``chunks`` (one party's update). Raises
        ValueError, naming the bad ciphertext, on one SEAL does not load under these
        parameters or that is not a fresh ciphertext of them; the sum is then unchanged."""
        if len(chunks) != self.count:
            raise ValueError(f"has {len(chunks)} ciphertexts, expected {self.count}")
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"factor={factor} must be finite and > 0")
        plain = self.seal.api.Plaintext()
        self.encoder.encode(factor, self.seal.parms_id, self.prime, plain)
        terms = []
        for i, chunk in enumerate(chunks):
            try:
                ciphertext = self.seal.load(chunk)
                self.seal.check(ciphertext)
            except Exception as error:  # SEAL raises bare ValueError/RuntimeError
                raise ValueError(f"ciphertext {i} rejected: {error}") from error
            self.evaluator.multiply_plain_inplace(ciphertext, plain)
            self.evaluator.rescale_to_next_inplace(ciphertext)
            terms.append(ciphertext)
        self._absorb(terms)

    def absorb(self, other: ScaledSum) -> None:
        """Add ``other``'s sum to this one, taking its ciphertexts: ``other`` is cleared."""
        if other.totals is not None:
            self._absorb(other.totals)
        other.clear()

    def _absorb(self, terms: list[Any]) -> None:
        if self.totals is None:
            self.totals = terms
        else:
            for total, term in zip(self.totals, terms, strict=True):
                self.evaluator.add_inplace(total, term)
        self.terms += 1

    def clear(self) -> None:
        self.totals, self.terms = None, 0

    def save(self) -> list[bytes]:
        """The sum's ciphertexts, serialized (empty before the first term)."""
        out = []
        for total in self.totals or []:
            total.save(_SCRATCH.target())
            out.append(_SCRATCH.read())
        return out

    def load(self, chunks: Sequence[bytes]) -> None:
        """Start from a saved sum (a checkpoint's); raises ValueError on a ciphertext that
        is not one of these parameters one level down at their scale."""
        if len(chunks) != self.count:
            raise ValueError(f"has {len(chunks)} ciphertexts, expected {self.count}")
        totals = []
        for i, chunk in enumerate(chunks):
            ciphertext = self.seal.load(chunk)
            if (
                ciphertext.size() != 2
                or ciphertext.parms_id() != self.level
                or ciphertext.scale != self.seal.scale
            ):
                raise ValueError(f"ciphertext {i} is not a saved sum of these parameters")
            totals.append(ciphertext)
        self.totals, self.terms = totals, 0
