"""FedBuff under CKKS: an encrypted offset over a plaintext base model.

The server keeps the initial model in plaintext (a seeded initialization reveals
nothing) and, as ciphertexts, the sum of every step it applied since: the *offset*.
Model version v is ``base + offset_v``, which only key holders can read. A train (or
evaluate) message carries both in one record: the base's arrays under the model's
names, the offset's ciphertexts beside them as ``ckks/<index>``
(:func:`offset_record`).

A client (:class:`OffsetClientMod`) decrypts the offset, trains from ``base + offset``
and sends its update ``Δ = local − (base + offset)`` encrypted, unweighted. The server
(:class:`OffsetAggregator`) multiplies each update's ciphertexts by the plaintext factor
``η·s(τ)/K`` that FedBuff gives it (staleness τ, buffer size K) and adds them to an
encrypted buffer (:class:`fedpriv.crypto.packed.ScaledSum`: one multiply and one rescale
per update); when K updates are in, the buffer is added to the offset, a new version.
Nothing is ever decrypted on the server, and it holds no key of any kind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from fedpriv.crypto import ckks, packed
from fedpriv.crypto.client import ARRAYS, METRICS, CkksClientMod
from fedpriv.crypto.fingerprint import short
from fedpriv.crypto.records import (
    KEY,
    PACKED_STYPE,
    Layout,
    chunk_name,
    format_problem,
    is_chunk,
    key_of,
)
from fedpriv.crypto.server import CkksAggregator


def offset_record(
    base: ArrayRecord, chunks: list[bytes], sizes: list[int], key: bytes
) -> ArrayRecord:
    """The model a client receives: ``base``'s arrays and, beside them, the offset's
    ciphertexts and the key fingerprint (none before the first step)."""
    record = ArrayRecord(dict(base.items()))
    for i, (chunk, size) in enumerate(zip(chunks, sizes, strict=True)):
        record[chunk_name(i)] = Array(dtype="ckks", shape=(size,), stype=PACKED_STYPE, data=chunk)
    if chunks:
        record[KEY] = Array(np.frombuffer(key, dtype=np.uint8).copy())
    return record


def offset_chunks(arrays: ArrayRecord) -> list[bytes]:
    """The offset's ciphertexts in a record of :func:`offset_record`, in index order."""
    return [arrays[name].data for name in sorted(arrays) if is_chunk(name)]


class OffsetAggregator:
    """The server's side: check each encrypted update, scale it into the buffer, and
    fold a full buffer into the offset."""

    def __init__(
        self, params: ckks.CkksParams, public: bytes, *, layout: Layout, weight_key: str
    ) -> None:
        self.params = params
        self.layout = layout
        # One model-sized part, summed in this process (a buffer takes one update at a time).
        self.checker = CkksAggregator(
            params, public, layout=layout, parts=1, weight_key=weight_key, workers=1
        )
        self.key = self.checker.key
        self.sizes = self.checker.sizes
        self.buffer = packed.ScaledSum(public, params, len(self.sizes))
        self.offset = packed.ScaledSum(public, params, len(self.sizes))
        #: The offset's ciphertexts as last saved (what train messages carry).
        self.saved: list[bytes] = []
        self.costs = self._zero_costs()

    @property
    def pending(self) -> bool:
        """Whether a full buffer waits to go into the offset (here never: it goes at once)."""
        return False

    @property
    def buffered(self) -> int:
        """Updates in the buffer."""
        return self.buffer.terms

    def check(self, reply: Message) -> str | None:
        """Why ``reply`` is not an encrypted update of this run (shape, format, key,
        declared weight), or None. SEAL's own check comes in :meth:`take`."""
        return self.checker.check(reply, ArrayRecord())

    def take(self, reply: Message, factor: float) -> str | None:
        """Add ``factor`` times the reply's update to the buffer; why not, or None (a
        ciphertext SEAL does not load under the run's parameters: the buffer is as it was)."""
        chunks = offset_chunks(next(iter(reply.content.array_records.values())))
        started = time.perf_counter()
        try:
            self.buffer.add(chunks, factor)
        except ValueError as error:
            return str(error)
        finally:
            self.costs["aggregate_seconds"] += time.perf_counter() - started
        self.costs["ciphertext_bytes_up"] += sum(len(c) for c in chunks)
        self.costs["plaintext_bytes_up"] += self.layout.float32_bytes
        self.note(next(iter(reply.content.metric_records.values())))
        return None

    def note(self, metrics: Any) -> None:
        """Keep the largest encryption time and error a client reported."""
        costs = self.costs
        for metric, entry in (
            ("ckks-encrypt-seconds", "encrypt_seconds_max"),
            ("ckks-decrypt-seconds", "decrypt_seconds_max"),
            ("ckks-error", "max_abs_error"),
        ):
            value = metrics.get(metric)
            if isinstance(value, int | float) and math.isfinite(value):  # a client's word
                costs[entry] = max(costs[entry] or 0.0, float(value))

    def step(self) -> bool:
        """Fold the full buffer into the offset: True, a new model version."""
        self.offset.absorb(self.buffer)
        self.saved = self.offset.save()
        return True

    def can_train(self, node: int) -> bool:
        """Whether ``node`` can send an update the server takes (here: any key holder)."""
        return True

    def settle(self, idle: list[int], *, force: bool) -> int:
        """Step on the full buffers held back for the ``idle`` nodes (here none is);
        returns the steps taken."""
        return 0

    def model(self, base: ArrayRecord) -> ArrayRecord:
        """The current model version as clients receive it: ``base`` and the offset."""
        return offset_record(base, self.saved, self.sizes, self.key)

    def restore(self, arrays: ArrayRecord) -> None:
        """Take back the offset of a checkpointed model record (none: version 0)."""
        if chunks := offset_chunks(arrays):
            if key_of(arrays) != self.key:
                raise ValueError("the checkpoint's offset was made under another CKKS key")
            self.offset.load(chunks)
            self.saved = chunks

    def round_costs(self, sent: int) -> dict[str, Any]:
        """The ``crypto`` entry of a round record since the last call; ``sent``: train
        messages that carried the model down."""
        out = self.costs
        state = sum(len(c) for c in self.saved)
        out["ciphertext_bytes_down"] = sent * (state + self.layout.float32_bytes)
        out["plaintext_bytes_down"] = sent * self.layout.float32_bytes
        self.costs = self._zero_costs()
        return out

    @staticmethod
    def _zero_costs() -> dict[str, Any]:
        return {
            "ciphertext_bytes_up": 0,
            "plaintext_bytes_up": 0,
            "aggregate_seconds": 0.0,
            "encrypt_seconds_max": None,
            "decrypt_seconds_max": None,
            "max_abs_error": None,
            "encryption": "symmetric (clients' shared secret key); server scales and adds "
            "(FedBuff: encrypted offset over a plaintext base)",
        }


class OffsetClientMod(CkksClientMod):
    """A key holder's side: decrypt the offset onto the base, encrypt the update."""

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        arrays = msg.content.array_records.get(ARRAYS)
        if arrays is None:
            return call_next(msg, context)
        started = time.perf_counter()
        sent = self.layout.unflatten(self.model_of(arrays))
        decrypt_seconds = time.perf_counter() - started
        msg.content[ARRAYS] = sent
        reply = call_next(msg, context)
        if reply.has_error() or ARRAYS not in reply.content.array_records:
            return reply  # an error, a decline, or an evaluation: nothing to encrypt
        # Measured from the model as the handler got it (its arrays' own dtypes).
        update = self.layout.flatten(reply.content.array_records[ARRAYS]) - self.layout.flatten(
            sent
        )
        self.wrap(update, msg, reply, context, decrypt_seconds)
        return reply

    def wrap(
        self,
        update: np.ndarray,
        msg: Message,
        reply: Message,
        context: Context,
        decrypt_seconds: float,
    ) -> None:
        """Put the update into ``reply`` as the server takes it: here encrypted, unweighted."""
        metrics = reply.content.metric_records[METRICS]
        reply.content[ARRAYS] = self.encrypted(update, metrics, decrypt_seconds)

    def encrypted(self, values: np.ndarray, metrics: Any, decrypt_seconds: float) -> ArrayRecord:
        """``values`` (an update, or a step of the offset) as ciphertexts under the run's
        key, their range checked and the mod's timings in ``metrics``."""
        self.check_range(values)
        chunks, sizes = self.seal(values, 1, metrics, decrypt_seconds)
        return offset_record(ArrayRecord(), chunks, sizes, self.key)

    def model_of(self, arrays: ArrayRecord) -> np.ndarray:
        """``base + offset`` from a record of :func:`offset_record`."""
        base = self.layout.flatten(arrays)
        chunks = offset_chunks(arrays)
        if not chunks:
            return base
        if (key := key_of(arrays)) != self.key:
            raise ValueError(
                f"CKKS: the model's offset was encrypted under key "
                f"{short(key) if key else 'none'}, but this node holds key {short(self.key)}; "
                "its client.ctx is stale: copy the run's client.ctx to this node"
            )
        if (problem := format_problem(arrays, PACKED_STYPE)) is not None:
            raise ValueError(f"CKKS: the model's offset {problem}")
        sizes = [math.prod(arrays[name].shape) for name in sorted(arrays) if is_chunk(name)]
        return base + packed.decrypt(self.secret, self.params, chunks, sizes, self.workers)

    def room(self) -> float:
        """The offset (the model's drift from its base) and each scaled update live one
        rescale down, where a slot holds less."""
        return self.params.max_abs_rescaled
