"""CKKS for vertical learning: parties encrypt embeddings, the coordinator adds them,
and only the label owner decrypts -- the merged sum, never one party's embedding.

Unlike horizontal aggregation, the encryptors here must not be able to decrypt, so
the parties hold a public-key context (:func:`fedpriv.crypto.ckks.make_split_keys`),
the label owner the secret key, and the coordinator the parameters alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from fedpriv.crypto import ckks
from fedpriv.crypto.records import CKKS_STYPE, chunks_of, is_encrypted, to_record


def chunk_sizes(count: int, slots: int) -> list[int]:
    """Values per ciphertext for ``count`` values."""
    return [min(slots, count - start) for start in range(0, count, slots)]


class CkksEmbeddingMod:
    """Flower client mod: encrypt named records in replies; at the label owner (any node
    when ``label_owner`` is None), decrypt named records in incoming messages (shape
    ``(-1, width)``)."""

    def __init__(
        self,
        params: ckks.CkksParams,
        keys: ckks.SplitKeys,
        *,
        label_owner: int | None,
        width: int,
        encrypt: Mapping[str, str],
        decrypt: Mapping[str, str],
    ) -> None:
        self.params = params
        self.keys = keys
        self.label_owner = label_owner
        self.width = width
        self.encrypt = dict(encrypt)
        self.decrypt = dict(decrypt)

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        message_type = msg.metadata.message_type
        name = self.decrypt.get(message_type)
        if name is not None and name in msg.content.array_records:
            party = int(context.node_config.get("partition-id", -1))
            if (self.label_owner is not None and party != self.label_owner) or (
                self.keys.secret is None
            ):
                raise PermissionError(f"party {party} holds no secret key; only the label owner")
            values = ckks.decrypt(
                self.keys.secret, self.params, chunks_of(msg.content.array_records[name])
            )
            msg.content[name] = ArrayRecord(
                {"values": Array(values.reshape(-1, self.width).astype(np.float32))}
            )
        reply = call_next(msg, context)
        name = self.encrypt.get(message_type)
        if name is None or reply.has_error() or name not in reply.content.array_records:
            return reply
        record = reply.content.array_records[name]
        plain = next(iter(record.values())).numpy().astype(np.float64).ravel()
        started = time.perf_counter()
        chunks = ckks.encrypt(self.keys.encrypt, self.params, plain)
        reply.content[name] = to_record(chunks, chunk_sizes(len(plain), self.params.slots))
        reply.content.metric_records["metrics"]["ckks-encrypt-seconds"] = (
            time.perf_counter() - started
        )
        return reply


class CkksEmbeddingSum:
    """The coordinator's part: check and add encrypted embeddings, holding no key."""

    def __init__(self, params: ckks.CkksParams, evaluate: bytes, width: int) -> None:
        self.params = params
        self.context = evaluate
        self.width = width
        self.seconds = 0.0

    def check(self, record: ArrayRecord, rows: int) -> str | None:
        """Why an encrypted embedding of ``rows`` entities is malformed (None: it is not)."""
        if not is_encrypted(record) or any(a.stype != CKKS_STYPE for a in record.values()):
            return "expected CKKS ciphertexts (crypto=ckks), got plaintext arrays"
        sizes = [int(a.shape[0]) for _, a in sorted(record.items())]
        expected = chunk_sizes(rows * self.width, self.params.slots)
        if sizes != expected:
            return (
                f"ciphertexts hold {sum(sizes)} values in {len(sizes)} chunks; expected "
                f"{rows}×{self.width} = {rows * self.width} in {len(expected)}"
            )
        return None

    def combine(
        self, records: Mapping[int, ArrayRecord], rows: int
    ) -> tuple[ArrayRecord | None, dict[int, str]]:
        """The chunk-wise sum of every party's ciphertexts, and parties left out (why)."""
        parties = list(records)
        sizes = chunk_sizes(rows * self.width, self.params.slots)
        started = time.perf_counter()
        sums, bad = ckks.add(
            self.context, self.params, [chunks_of(records[p]) for p in parties], sizes
        )
        self.seconds += time.perf_counter() - started
        if bad:
            return None, {parties[i]: reason for i, reason in bad.items()}
        return to_record(sums, sizes), {}
