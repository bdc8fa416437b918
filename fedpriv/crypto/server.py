"""The server's side of CKKS aggregation: check the shape of ciphertext replies, sum them.

The server holds the public context only (parameters, no key of any kind) and the key
set's fingerprint. It learns which clients replied, their example counts, the sizes of
their ciphertexts and the key they used; nothing of the values. Replies are packed
ciphertexts (:mod:`fedpriv.crypto.packed`); SEAL expands a seeded one from its seed
when it loads it, which needs the parameters alone.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.app import ArrayRecord, Message

from fedpriv.crypto import ckks, packed
from fedpriv.crypto.base import Aggregate
from fedpriv.crypto.fingerprint import run_key, short
from fedpriv.crypto.records import (
    KEY,
    PACKED_STYPE,
    Layout,
    chunk_name,
    chunks_of,
    format_problem,
    key_of,
    to_record,
)
from fedpriv.records import DeclaredWeights


class CkksAggregator:
    """Chunk-wise sums of pre-weighted ciphertexts, and the sum of their weights."""

    def __init__(
        self,
        params: ckks.CkksParams,
        public: bytes,
        *,
        layout: Layout,
        parts: int,
        weight_key: str,
        workers: int,
    ) -> None:
        self.params = params
        self.public = public
        self.key = run_key(public)
        self.layout = layout
        self.weight_key = weight_key
        self.workers = workers
        self.weights = DeclaredWeights(weight_key)
        self.sizes = layout.chunk_sizes(parts, params.packed_values)
        self.names = [chunk_name(i) for i in range(len(self.sizes))]

    def check(self, reply: Message, current: ArrayRecord) -> str | None:
        if reply.has_error():
            return f"client error: {reply.error.reason}"
        content = reply.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return (
                f"expected one ArrayRecord and one MetricRecord, got "
                f"{len(content.array_records)} and {len(content.metric_records)}"
            )
        arrays = next(iter(content.array_records.values()))
        ciphertexts = sorted(name for name in arrays if name != KEY)
        if ciphertexts != self.names:
            return (
                f"expected {len(self.names)} ciphertexts named ckks/000000.. (an update of "
                f"{sum(self.sizes)} values), got {len(ciphertexts)} arrays"
            )
        if (problem := format_problem(arrays, PACKED_STYPE)) is not None:
            return problem
        for name, size in zip(self.names, self.sizes, strict=True):
            if tuple(arrays[name].shape) != (size,):
                return f"array {name!r} is not a CKKS ciphertext of {size} values"
        return self.key_problem(arrays) or self.weights.problem(reply)

    def key_problem(self, arrays: ArrayRecord) -> str | None:
        """Why the ciphertexts are not shown to be under the run's key, or None."""
        key = key_of(arrays)
        if key is None:
            return (
                f"no {KEY!r} (32 bytes) beside the ciphertexts: the client does not show "
                f"that it encrypts under this run's key {short(self.key)}"
            )
        if key != self.key:
            return (
                f"ciphertexts made under CKKS key {short(key)}, not this run's key "
                f"{short(self.key)} (a stale client.ctx? copy the run's to that device)"
            )
        return None

    def aggregate(
        self, server_round: int, replies: list[Message], current: ArrayRecord, sent: int
    ) -> Aggregate:
        contributions = [chunks_of(next(iter(r.content.array_records.values()))) for r in replies]
        started = time.perf_counter()
        sums, bad = packed.add(
            self.public, self.params, contributions, len(self.sizes), self.workers
        )
        seconds = time.perf_counter() - started
        rejected = [(replies[k], reason) for k, reason in sorted(bad.items())]
        good = [r for k, r in enumerate(replies) if k not in bad]
        record = {"crypto": self.costs(replies, good, contributions, current, sent, seconds)}
        if not good:
            return Aggregate(None, rejected, record)
        weight = sum(float(self._metrics(r)[self.weight_key]) for r in good)
        state = to_record(sums, self.sizes, weight, self.key, stype=PACKED_STYPE)
        return Aggregate(state, rejected, record)

    def costs(
        self,
        replies: list[Message],
        good: list[Message],
        contributions: list[list[bytes]],
        current: ArrayRecord,
        sent: int,
        seconds: float,
    ) -> dict[str, Any]:
        """The round's crypto costs: bytes against float32 plaintext, and seconds."""
        state_bytes = sum(len(array.data) for array in current.values())
        client = [self._metrics(r) for r in good]
        errors = [float(m["ckks-error"]) for m in client if "ckks-error" in m]
        return {
            "ciphertext_bytes_up": sum(len(c) for chunks in contributions for c in chunks),
            "plaintext_bytes_up": len(replies) * self.layout.float32_bytes,
            "ciphertext_bytes_down": sent * state_bytes,
            "plaintext_bytes_down": sent * self.layout.float32_bytes,
            "aggregate_seconds": seconds,
            "encrypt_seconds_max": max(
                (float(m["ckks-encrypt-seconds"]) for m in client),
                default=None,
            ),
            "decrypt_seconds_max": max(
                (float(m["ckks-decrypt-seconds"]) for m in client),
                default=None,
            ),
            "max_abs_error": max(errors, default=None),
        }

    @staticmethod
    def _metrics(reply: Message) -> Any:
        return next(iter(reply.content.metric_records.values()))
