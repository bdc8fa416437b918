"""How encrypted state travels in Flower records.

A model (or a server state of several model-sized parts, e.g. FedAvgM's weights and
momentum) is flattened in the model's array order, concatenated, and cut into
ciphertexts. Each ciphertext is one Flower ``Array`` named ``ckks/<index>``, shape
``(values,)``, whose stype names its format and version: :data:`PACKED_STYPE` for
horizontal aggregation (:mod:`fedpriv.crypto.packed`, two values per slot), and
:data:`CKKS_STYPE` for TenSEAL vectors (vertical embeddings, swarm distances, and
horizontal states written before the packed format; :func:`format_problem` names the
mismatch). The global state also
carries :data:`WEIGHT`, the plaintext sum of the example counts its ciphertexts are
weighted by: ciphertexts hold ``Σ n_k·x_k`` and key holders divide by it. A client's
encrypted update and the server's encrypted state carry :data:`KEY`, the fingerprint of
the key set they were made under (:mod:`fedpriv.crypto.fingerprint`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from flwr.app import Array, ArrayRecord

from fedpriv.crypto.fingerprint import SIZE
from fedpriv.records import payload_values

CKKS_STYPE = "tenseal.ckks"
#: Packed SEAL ciphertexts (:mod:`fedpriv.crypto.packed`); ``/1``: the format's version.
PACKED_STYPE = "seal.ckks.complex/1"
#: What each format is, for the error that meets an unexpected one.
FORMATS = {
    CKKS_STYPE: "TenSEAL CKKS vectors, one value per slot (horizontal states of fedpriv "
    "before the packed format)",
    PACKED_STYPE: "SEAL ciphertexts, two values per slot, version 1",
}
WEIGHT = "ckks-weight"
#: The fingerprint of the key set the ciphertexts beside it were made under.
KEY = "key-fingerprint"
#: ``crypto=ckks_secagg``: what the state's sum needs added (mod 2^bits) to lose its masks.
CORRECTION = "secagg-correction"


def chunk_name(index: int) -> str:
    return f"ckks/{index:06d}"


def is_chunk(name: str) -> bool:
    """True for a ciphertext's name (not the weight's, the key's or another entry's)."""
    return name.startswith("ckks/")


def is_encrypted(arrays: ArrayRecord) -> bool:
    """True for a record of ciphertexts (an encrypted state or update), in any format."""
    return any(array.stype in FORMATS for array in arrays.values())


def format_problem(arrays: ArrayRecord, expected: str) -> str | None:
    """Why the ciphertexts of ``arrays`` are not all in format ``expected``, or None."""
    found = {a.stype for name, a in arrays.items() if is_chunk(name)} - {expected}
    if not found:
        return None
    other = sorted(found)[0]
    return (
        f"ciphertexts in format {other!r} ({FORMATS.get(other, 'unknown')}), but this fedpriv "
        f"reads {expected!r} ({FORMATS[expected]}); run the same fedpriv version on the "
        "server and every client, and start a run afresh rather than resume a checkpoint "
        "of the older format"
    )


def to_record(
    chunks: list[bytes],
    sizes: list[int],
    weight: float | None = None,
    key: bytes | None = None,
    stype: str = CKKS_STYPE,
) -> ArrayRecord:
    """Ciphertexts in format ``stype`` (and the state's total weight, the key set's
    fingerprint) as an ArrayRecord."""
    record = ArrayRecord(
        {
            chunk_name(i): Array(dtype="ckks", shape=(size,), stype=stype, data=chunk)
            for i, (chunk, size) in enumerate(zip(chunks, sizes, strict=True))
        }
    )
    if weight is not None:
        record[WEIGHT] = Array(np.array([weight], dtype=np.float64))
    if key is not None:
        record[KEY] = Array(np.frombuffer(key, dtype=np.uint8).copy())
    return record


def chunks_of(arrays: ArrayRecord) -> list[bytes]:
    """The ciphertexts of a record, in index order."""
    return [arrays[name].data for name in sorted(arrays) if name not in (WEIGHT, KEY, CORRECTION)]


def sizes_of(arrays: ArrayRecord) -> list[int]:
    """How many values each ciphertext of a record holds, in index order."""
    return [math.prod(arrays[name].shape) for name in sorted(arrays) if is_chunk(name)]


def weight_of(arrays: ArrayRecord) -> float:
    return float(arrays[WEIGHT].numpy()[0])


def key_of(arrays: ArrayRecord) -> bytes | None:
    """The key fingerprint a record carries, or None (absent, or not 32 bytes)."""
    if KEY not in arrays:
        return None
    values = payload_values(arrays[KEY], "uint8", (SIZE,))
    return None if values is None else values.tobytes()


@dataclasses.dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of a model's arrays: how to flatten and rebuild it."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, arrays: ArrayRecord) -> Layout:
        return cls(
            tuple(arrays),
            tuple(tuple(a.shape) for a in arrays.values()),
            tuple(a.dtype for a in arrays.values()),
        )

    @property
    def size(self) -> int:
        """Values in one model."""
        return sum(math.prod(shape) for shape in self.shapes)

    @property
    def float32_bytes(self) -> int:
        """Bytes of one model as float32: the plaintext a ciphertext stands in for."""
        return 4 * self.size

    def flatten(self, arrays: ArrayRecord) -> np.ndarray:
        """The model's values in layout order, as one float64 vector."""
        return np.concatenate(
            [arrays[name].numpy().astype(np.float64).ravel() for name in self.names]
        )

    def unflatten(self, vector: np.ndarray) -> ArrayRecord:
        """A model record from ``vector`` (integer arrays rounded back)."""
        out, offset = {}, 0
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes, strict=True):
            size = math.prod(shape)
            values = vector[offset : offset + size].reshape(shape)
            if np.issubdtype(np.dtype(dtype), np.integer):
                values = np.rint(values)
            out[name] = Array(np.ascontiguousarray(values.astype(dtype)))
            offset += size
        return ArrayRecord(out)

    def chunk_sizes(self, parts: int, slots: int) -> list[int]:
        """Values per ciphertext for a state of ``parts`` models."""
        total = parts * self.size
        return [min(slots, total - start) for start in range(0, total, slots)]
