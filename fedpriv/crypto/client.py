"""The key holders' side of CKKS aggregation: a Flower client mod.

On the way in it decrypts the global state and hands the node's handler a plaintext
model, as if there were no encryption. On the way out it turns the trained model into
this client's contribution to the next state (the strategy's own rule), pre-weights it
by the client's example count and encrypts it (:mod:`fedpriv.crypto.packed`: two values
per slot, seeded unless asked otherwise), so the server only adds. Both ways the
ciphertexts carry the key set's fingerprint: the server refuses an update made under
another key, and a node refuses a state it cannot decrypt (a stale ``client.ctx``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Context, Message

from fedpriv.crypto import ckks, packed
from fedpriv.crypto.fingerprint import fingerprint, short
from fedpriv.crypto.records import (
    PACKED_STYPE,
    Layout,
    chunks_of,
    format_problem,
    is_encrypted,
    key_of,
    sizes_of,
    to_record,
    weight_of,
)

ARRAYS, METRICS = "arrays", "metrics"


class CkksClientMod:
    """Flower client mod: decrypt what arrives, encrypt what leaves."""

    def __init__(
        self,
        params: ckks.CkksParams,
        secret: bytes,
        *,
        strategy: Any,
        layout: Layout,
        weight_key: str,
        num_clients: int,
        workers: int,
        verify: bool,
        seeded: bool = True,
    ) -> None:
        self.params = params
        self.secret = secret
        self.strategy = strategy
        self.layout = layout
        self.weight_key = weight_key
        self.num_clients = num_clients
        self.workers = workers
        self.verify = verify
        self.seeded = seeded
        self.key = fingerprint(secret)

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        arrays = msg.content.array_records.get(ARRAYS)
        if arrays is None:
            return call_next(msg, context)
        started = time.perf_counter()
        state = self.decrypt_state(arrays)
        decrypt_seconds = time.perf_counter() - started
        msg.content[ARRAYS] = self.layout.unflatten(state[0])
        reply = call_next(msg, context)
        if reply.has_error() or ARRAYS not in reply.content.array_records:
            return reply  # an error, a decline, or an evaluation: nothing to encrypt
        metrics = reply.content.metric_records[METRICS]
        weight = float(metrics[self.weight_key])  # type: ignore[arg-type]
        local = self.layout.flatten(reply.content.array_records[ARRAYS])
        values = self.encode(
            weight * np.concatenate(self.strategy.contribution(state, local)), msg, reply, context
        )
        chunks, sizes = self.seal(values, len(state), metrics, decrypt_seconds, scale=weight)
        reply.content[ARRAYS] = to_record(chunks, sizes, key=self.key, stype=PACKED_STYPE)
        return reply

    def seal(
        self,
        values: np.ndarray,
        parts: int,
        metrics: Any,
        decrypt_seconds: float,
        scale: float = 1.0,
    ) -> tuple[list[bytes], list[int]]:
        """Encrypt a reply's ``values`` (``parts`` state parts) and record the mod's
        timings, and with ``verify`` the round-trip error (divided by ``scale``, the
        weight the values were multiplied by), in the reply's ``metrics``."""
        started = time.perf_counter()
        chunks = packed.encrypt(self.secret, self.params, values, self.workers, seeded=self.seeded)
        metrics["ckks-encrypt-seconds"] = time.perf_counter() - started
        metrics["ckks-decrypt-seconds"] = decrypt_seconds
        sizes = self.layout.chunk_sizes(parts, self.params.packed_values)
        if self.verify:
            decrypted = packed.decrypt(self.secret, self.params, chunks, sizes, self.workers)
            metrics["ckks-error"] = float(np.abs(decrypted - values).max()) / scale
        return chunks, sizes

    def decrypt_state(self, arrays: Any) -> list[np.ndarray]:
        """The global state's parts (model first). Round 1's state is a plaintext model
        (a seeded initialization reveals nothing); other parts then start at zero."""
        parts = self.strategy.state_parts()
        if not is_encrypted(arrays):
            model = self.layout.flatten(arrays)
            return [model] + [np.zeros_like(model) for _ in range(parts - 1)]
        if (key := key_of(arrays)) is not None and key != self.key:
            raise ValueError(
                f"CKKS: the global state was encrypted under key {short(key)}, but this node "
                f"holds key {short(self.key)}; its client.ctx is stale (the key set was "
                "rotated?): copy the run's client.ctx to this node"
            )
        if (problem := format_problem(arrays, PACKED_STYPE)) is not None:
            raise ValueError(f"CKKS: the global state's {problem}")
        total = packed.decrypt(
            self.secret, self.params, chunks_of(arrays), sizes_of(arrays), self.workers
        )
        vector = self.decode(total, arrays) / weight_of(arrays)
        return list(vector.reshape(parts, self.layout.size))

    def encode(
        self, values: np.ndarray, msg: Message, reply: Message, context: Context
    ) -> np.ndarray:
        """What is encrypted of the pre-weighted update ``values`` (here: itself, once
        its range is checked; a variant may mask it and add to ``reply``)."""
        self.check_range(values)
        return values

    def decode(self, total: np.ndarray, arrays: Any) -> np.ndarray:
        """The pre-weighted sum ``Σ n_k·s_k`` from the decrypted state (here: itself)."""
        return total

    def check_range(self, values: np.ndarray) -> None:
        """Refuse an update whose sum over all clients could wrap around the modulus.

        A slot holds a pair of values as one complex number, and what must not wrap is
        its modulus (the encoding's coefficients are bounded by the largest one)."""
        pairs = np.append(values, 0.0) if len(values) % 2 else values
        largest = float(np.abs(np.ascontiguousarray(pairs).view(np.complex128)).max(initial=0.0))
        limit = self.limit()
        if not largest < limit:
            raise ValueError(
                f"CKKS: this client's pre-weighted update reaches |n_k·x| = {largest:.3g} (a "
                "slot's pair of values as one complex number); the "
                f"sum over {self.num_clients} clients must stay below "
                f"2^{math.log2(self.room()):g}, so each must stay "
                f"below {limit:.3g}. Lower crypto.scale_bits (coarser precision) or use a "
                "larger first prime in crypto.coeff_mod_bit_sizes"
            )

    def limit(self) -> float:
        """The largest magnitude one client's pair of values may reach in a slot."""
        return self.room() / self.num_clients

    def room(self) -> float:
        """The largest magnitude the sum of all clients' values may reach in a slot."""
        return self.params.max_abs_value
