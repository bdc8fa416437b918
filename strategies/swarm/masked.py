"""The relay's part of a swarm leader's merge under ``crypto=ckks_secagg``.

The relay runs the horizontal path's key ceremony and unmasking
(:class:`fedpriv.crypto.secagg_server.SecAggAggregator`) among the peers: each sync it
names the peers whose masks must cancel, checks the masked ciphertexts they send,
rebuilds from ``threshold`` peers' shares the correction that removes the masks from
their sum, and hands the leader the ciphertexts and the correction. It holds the CKKS
parameters only, so it reads neither a model nor the merge; the leader reads the merge
and, of one peer alone, only a masked model (docs/crypto.md, "Swarm").
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from fedpriv.config import ExperimentConfig
from fedpriv.crypto.parallel import default_workers
from fedpriv.crypto.records import CORRECTION, Layout
from fedpriv.crypto.secagg_node import PEERS, RECORD, ROUND
from fedpriv.crypto.secagg_peers import CONTRIBUTION, SwarmSecAggMod, masked_name
from fedpriv.crypto.secagg_server import SecAggAggregator, Send

#: The weight key the aggregator's reply checks would read (the relay's own checks
#: replace them: a swarm reply carries the peer's metrics under ``metrics``).
WEIGHT = "num-examples"


def masked_mods(config: ExperimentConfig, secret: bytes, layout: Layout) -> list[SwarmSecAggMod]:
    """The peers' mod, holding the run's CKKS secret (every peer holds it)."""
    spec = config.crypto
    return [
        SwarmSecAggMod(
            spec.params,  # type: ignore[attr-defined]
            secret,
            layout=layout,
            quantizer=spec.quantizer(config.num_clients),  # type: ignore[attr-defined]
            num_clients=config.num_clients,
            workers=spec.workers or config.engine.client_cpus(),  # type: ignore[attr-defined]
        )
    ]


class MaskedMerge:
    """The relay's side: ceremony, stamping, checks, and the masks' correction."""

    def __init__(self, config: ExperimentConfig, layout: Layout, public: bytes) -> None:
        spec = config.crypto
        self.num_clients = config.num_clients
        self.aggregator = SecAggAggregator(
            spec.params,  # type: ignore[attr-defined]
            public,
            layout=layout,
            parts=1,
            weight_key=WEIGHT,
            workers=spec.workers or default_workers(),  # type: ignore[attr-defined]
            threshold=spec.threshold,  # type: ignore[attr-defined]
            quantizer=spec.quantizer,  # type: ignore[attr-defined]
        )

    @property
    def threshold(self) -> int:
        return self.aggregator.threshold

    def open(self, send: Send, nodes: list[int]) -> None:
        """The key ceremony among every peer (each sync's merge takes all of them)."""
        self.aggregator.open(
            send, nodes=nodes, per_round=self.num_clients, num_clients=self.num_clients
        )

    def stamp(self, sync: int, configs: Mapping[int, ConfigRecord]) -> list[int]:
        """Name in each peer's config (by node) the sync and the nodes whose masks must
        cancel: those with mask keys whose secret was never rebuilt. Returns them."""
        agg = self.aggregator
        peers = sorted(n for n in configs if n in agg.mask_keys and n not in agg.retired)
        agg.peers[sync] = agg.current = peers
        for config in configs.values():
            config[ROUND], config[PEERS] = sync, peers
        return peers

    def check(self, reply: Message) -> str | None:
        """Why a peer's reply does not carry this run's masked ciphertexts of the model
        and its self-mask shares for each of the sync's peers (None: it does)."""
        record = reply.content.array_records.get(CONTRIBUTION)
        if record is None:
            return f"no {CONTRIBUTION!r} record of masked ciphertexts"
        names = sorted(n for n in record if n.startswith("ckks/"))
        if names != self.aggregator.names:
            return f"{len(names)} ciphertexts, expected {len(self.aggregator.names)}"
        for name, size in zip(names, self.aggregator.sizes, strict=True):
            if tuple(record[name].shape) != (size,):
                return f"array {name!r} is not a CKKS ciphertext of {size} values"
        if (problem := self.aggregator.key_problem(record)) is not None:
            return problem
        peers = self.aggregator.current
        sealed = reply.content.config_records.get(RECORD)
        if reply.metadata.src_node_id not in peers:
            return "not among this sync's peers (no mask keys, or its secret was rebuilt)"
        if sealed is None or any(f"to/{p}" not in sealed for p in peers):
            return f"no self-mask share sealed to each of the sync's peers {peers}"
        return None

    def correction(self, sync: int, good: list[Message]) -> tuple[np.ndarray | None, str]:
        """What removes the masks from the sum of ``good``'s ciphertexts, or None and
        why the sync cannot be unmasked (fewer than ``threshold`` survivors)."""
        peers = self.aggregator.peers.pop(sync, [])
        return self.aggregator.correction(sync, peers, good)

    def forget(self, sync: int) -> None:
        """A sync that merges nothing (its leader did not answer): no unmasking."""
        self.aggregator.peers.pop(sync, None)

    @staticmethod
    def lead_records(
        replies: Mapping[int, Message], correction: np.ndarray
    ) -> dict[str, ArrayRecord]:
        """The leader's inbox: each surviving peer's ciphertexts and the correction."""
        out = {masked_name(p): r.content.array_records[CONTRIBUTION] for p, r in replies.items()}
        out[CORRECTION] = ArrayRecord({"values": Array(correction)})
        return out
