"""A federation of ``crypto=ckks_secagg`` nodes without an engine, for attacking the
protocol: the real node handlers, client mod and server aggregator, each node with its
own Flower ``Context``, messages delivered in process, and every message and reply kept
(the transcript a server holds). The local training is replaced by a known update, which
is what an attacker tries to recover."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from fedpriv.crypto import CkksSecAgg, ckks, masking, packed
from fedpriv.crypto.records import Layout, chunks_of, sizes_of
from fedpriv.crypto.secagg_node import RECORD, STATE, SecAggNode
from fedpriv.strategies.horizontal.specs import FedAvg

WEIGHT = "num-examples"


@dataclasses.dataclass
class Federation:
    spec: CkksSecAgg
    keys: ckks.KeyPair
    layout: Layout
    contexts: dict[int, Context]
    updates: dict[int, np.ndarray]
    weights: dict[int, int]
    #: Every message the server sent, and every reply it received.
    transcript: list[Message] = dataclasses.field(default_factory=list)
    received: list[Message] = dataclasses.field(default_factory=list)
    #: Nodes that do not answer (dropped out) from now on.
    offline: set[int] = dataclasses.field(default_factory=set)

    @classmethod
    def create(
        cls, n: int, threshold: int, size: int = 300, seed: int = 0, bundles: list[Any] = ()
    ) -> Federation:
        """``bundles``: each node's key bundle (node k holds device k-1's), as on a fleet;
        none: simulated nodes."""
        spec = CkksSecAgg(threshold=threshold)
        rng = np.random.default_rng(seed)
        layout = Layout.of(ArrayRecord({"w": Array(np.zeros(size, dtype=np.float32))}))
        nodes = range(1, n + 1)
        return cls(
            spec=spec,
            keys=ckks.make_keys(spec.params),
            layout=layout,
            contexts={k: Context(1, k, _node_config(bundles, k), RecordDict(), {}) for k in nodes},
            updates={k: rng.normal(0, 1, size) for k in nodes},
            weights={k: int(rng.integers(5, 200)) for k in nodes},
        )

    @property
    def mod(self) -> Any:
        (mod,) = self.spec.client_mods(_Config(len(self.contexts)), self.keys.secret, self.layout)
        return mod

    def send(self, messages: list[Message]) -> list[Message]:
        handlers = SecAggNode().handlers()
        replies = []
        for message in messages:
            self.transcript.append(message)
            node = message.metadata.dst_node_id
            if node in self.offline:
                continue
            try:
                if message.metadata.message_type == "train":
                    reply = self.mod(message, self.contexts[node], self.train)
                else:
                    reply = handlers[message.metadata.message_type](message, self.contexts[node])
            except ValueError as error:
                reply = Message(Error(code=1, reason=str(error)), reply_to=message)
            self.transcript.append(reply)
            self.received.append(reply)
            replies.append(reply)
        return replies

    def train(self, msg: Message, context: Context) -> Message:
        """The 'training': this node's known update and weight."""
        node = context.node_id
        record = ArrayRecord({"w": Array(self.updates[node].astype(np.float64))})
        metrics = MetricRecord({WEIGHT: self.weights[node]})
        return Message(RecordDict({"arrays": record, "metrics": metrics}), reply_to=msg)

    def aggregator(self) -> Any:
        aggregator = self.spec.aggregator(
            None, weight_key=WEIGHT, strategy=FedAvg(), layout=self.layout, public=self.keys.public
        )
        nodes = sorted(self.contexts)
        aggregator.open(self.send, nodes=nodes, per_round=len(nodes), num_clients=len(nodes))
        return aggregator

    def round(self, aggregator: Any, server_round: int, drop: set[int] = frozenset()) -> Any:
        """One round: train messages to every node with keys, ``drop`` dropping out
        after the ceremony; returns (the aggregate, the replies)."""
        initial = ArrayRecord({"w": Array(np.zeros(self.layout.size, dtype=np.float32))})
        messages = [
            Message(
                RecordDict({"arrays": initial, "config": ConfigRecord({})}),
                dst_node_id=node,
                message_type="train",
            )
            for node in sorted(self.contexts)
        ]
        aggregator.stamp(server_round, messages)
        self.offline |= set(drop)
        replies = [r for r in self.send(messages) if aggregator.check(r, initial) is None]
        return aggregator.aggregate(server_round, replies, initial, len(messages)), replies

    def mean(self, arrays: ArrayRecord) -> np.ndarray:
        """What a key holder reads from the aggregate: the weighted mean."""
        return self.mod.decrypt_state(arrays)[0]

    def fedavg(self, nodes: list[int]) -> np.ndarray:
        """The plaintext FedAvg of ``nodes``' updates (the oracle)."""
        return np.average([self.updates[k] for k in nodes], axis=0,
                          weights=[self.weights[k] for k in nodes])  # fmt: skip

    def state(self, node: int) -> ConfigRecord:
        return self.contexts[node].state.config_records[STATE]

    def masked(self, reply: Message) -> np.ndarray:
        """A reply's masked integers, as any key holder decrypts them."""
        arrays = reply.content.array_records["arrays"]
        values = packed.decrypt(
            self.keys.secret, self.spec.params, chunks_of(arrays), sizes_of(arrays)
        )
        return np.rint(values).astype(np.int64).astype(np.uint64)

    def unmasking_answers(self) -> list[ConfigRecord]:
        """The shares clients revealed to the server at unmasking."""
        return [
            r.content.config_records[RECORD]
            for r in self.received
            if r.metadata.message_type == "query.secagg_unmask" and r.has_content()
        ]

    def sealed_to(self, reply: Message, node: int) -> bytes:
        return reply.content.config_records[RECORD][f"to/{node}"]  # type: ignore[return-value]

    def quantizer(self) -> masking.Quantizer:
        return self.spec.quantizer(len(self.contexts))


def _node_config(bundles: list[Any], node: int) -> dict[str, Any]:
    return {"keys-dir": str(bundles[node - 1])} if bundles else {}


@dataclasses.dataclass
class _Config:
    """The parts of an ExperimentConfig the client mod reads."""

    num_clients: int
    strategy: Any = dataclasses.field(default_factory=FedAvg)
    family: str = "horizontal"
    privacy: Any = None
    engine: Any = None

    def __post_init__(self) -> None:
        self.privacy = _Privacy()
        self.engine = _Engine()


class _Privacy:
    def weight_key(self) -> str:
        return WEIGHT


class _Engine:
    def client_cpus(self) -> int:
        return 1
