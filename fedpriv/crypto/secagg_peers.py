"""A swarm leader's merge under ``crypto=ckks_secagg``: the peers' side, a Flower mod.

On a peer's way out of a sync (``train.swarm``) it takes the pre-weighted model the peer
left under :data:`CONTRIBUTION`, quantizes it, adds the pairwise and self masks of
:mod:`fedpriv.crypto.secagg_node` and encrypts it under the run's CKKS key, with the
self-mask seed's shares sealed to each peer; the relay forwards it to the leader. On the
leader's way in (``query.lead``) it adds the peers' ciphertexts, decrypts the sum, removes
the masks with the correction the relay rebuilt from the survivors' shares, and hands the
leader's handler the plaintext sum only.

Every peer holds the CKKS secret key (as every client does in the horizontal path), so
the leader could decrypt one peer's ciphertext alone: what it reads then is that peer's
model under the masks it shares with every other peer, which cancel only in the sum of
all the survivors. Nothing here is new cryptography: the masks, shares and channels are
:mod:`fedpriv.crypto.masking`'s, the ciphertexts :mod:`fedpriv.crypto.packed`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message

from fedpriv.crypto import ckks, masking, packed
from fedpriv.crypto.fingerprint import fingerprint, short
from fedpriv.crypto.records import (
    CORRECTION,
    PACKED_STYPE,
    Layout,
    chunks_of,
    format_problem,
    key_of,
    to_record,
)
from fedpriv.crypto.secagg_node import RECORD, mask_update, refuse_overflow

#: A ``train.swarm`` reply's record: the peer's pre-weighted model ``w·x`` (its handler
#: writes plaintext float64 ``values``; this mod replaces it with masked ciphertexts).
CONTRIBUTION = "contribution"
#: The ``query.lead`` message's records of each peer's ciphertexts: ``masked-<party>``.
MASKED_PREFIX = "masked-"
#: What the leader's handler receives instead: the unmasked sum ``Σ w·x`` (``values``).
SUM = "model-sum"


def masked_name(party: int) -> str:
    return f"{MASKED_PREFIX}{party}"


class SwarmSecAggMod:
    """Flower client mod of a swarm peer: mask and encrypt what it contributes to a
    leader's merge; as the leader, sum, decrypt and unmask the merge's total."""

    def __init__(
        self,
        params: ckks.CkksParams,
        secret: bytes,
        *,
        layout: Layout,
        quantizer: masking.Quantizer,
        num_clients: int,
        workers: int,
    ) -> None:
        self.params = params
        self.secret = secret
        self.key = fingerprint(secret)
        self.sizes = layout.chunk_sizes(1, params.packed_values)
        self.quantizer = quantizer
        self.num_clients = num_clients
        self.workers = workers

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        kind = msg.metadata.message_type
        if kind == "query.lead" and any(
            n.startswith(MASKED_PREFIX) for n in msg.content.array_records
        ):
            msg.content[SUM] = ArrayRecord({"values": Array(self.unmasked_sum(msg))})
        reply = call_next(msg, context)
        if kind != "train.swarm" or reply.has_error():
            return reply
        if CONTRIBUTION in reply.content.array_records:
            self.encrypt(msg, reply, context)
        return reply

    def encrypt(self, msg: Message, reply: Message, context: Context) -> None:
        """Replace the reply's plaintext contribution with its masked ciphertexts, and
        add the self-mask seed's shares (sealed to each peer of the sync)."""
        values = reply.content.array_records[CONTRIBUTION]["values"].numpy().astype(np.float64)
        refuse_overflow(self.quantizer, values, self.num_clients, "peer", "model |w·x|")
        config = msg.content.config_records["config"]
        bits = self.quantizer.bits
        masked, sealed = mask_update(context, config, self.quantizer.encode(values.ravel()), bits)
        chunks = packed.encrypt(
            self.secret, self.params, masked.astype(np.float64), self.workers, seeded=True
        )
        reply.content[CONTRIBUTION] = to_record(
            chunks, self.sizes, key=self.key, stype=PACKED_STYPE
        )
        reply.content[RECORD] = ConfigRecord(dict(sealed))

    def unmasked_sum(self, msg: Message) -> np.ndarray:
        """``Σ w·x`` over the peers whose ciphertexts arrived: their CKKS sum, decrypted,
        plus the relay's correction (mod 2^bits), decoded. The masks cancel only here."""
        names = sorted(n for n in msg.content.array_records if n.startswith(MASKED_PREFIX))
        records = [msg.content.array_records[n] for n in names]
        for name, record in zip(names, records, strict=True):
            if (problem := self.problem(record)) is not None:
                raise ValueError(f"query.lead: {name}: {problem}")
        sums, bad = packed.add(
            self.secret, self.params, [chunks_of(r) for r in records], len(self.sizes)
        )
        if bad:
            named = {names[k]: reason for k, reason in bad.items()}
            raise ValueError(f"query.lead: ciphertexts SEAL does not add: {named}")
        total = packed.decrypt(self.secret, self.params, sums, self.sizes, self.workers)
        correction = msg.content.array_records.get(CORRECTION)
        if correction is None:
            raise ValueError("query.lead: masked models without the relay's mask correction")
        bits = self.quantizer.bits
        residues = np.rint(total).astype(np.int64).astype(np.uint64)
        fix = correction["values"].numpy().astype(np.uint64)
        return self.quantizer.decode((residues + fix) & np.uint64((1 << bits) - 1))

    def problem(self, record: ArrayRecord) -> str | None:
        """Why a peer's record is not this run's masked ciphertexts of the model."""
        if (problem := format_problem(record, PACKED_STYPE)) is not None:
            return problem
        if (key := key_of(record)) != self.key:
            made = short(key) if key is not None else "no key"
            return f"made under CKKS key {made}, not this run's {short(self.key)}"
        if len(chunks_of(record)) != len(self.sizes):
            return f"{len(chunks_of(record))} ciphertexts, expected {len(self.sizes)}"
        return None


def contribution(values: np.ndarray) -> ArrayRecord:
    """A peer's pre-weighted model as its handler leaves it for the mod."""
    return ArrayRecord({"values": Array(np.asarray(values, dtype=np.float64))})


def plain_sum(msg: Message) -> np.ndarray | None:
    """The unmasked sum the mod handed the leader (None: a plaintext merge)."""
    record: Any = msg.content.array_records.get(SUM)
    return None if record is None else record["values"].numpy().astype(np.float64)
