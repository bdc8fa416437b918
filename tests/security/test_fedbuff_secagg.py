"""FedBuff under ``crypto=ckks_secagg`` (:mod:`fedpriv.crypto.secagg_buffer`) against
the coalition it is built for: the server (every message and reply it relays) plus
``threshold - 1`` clients (their keys and every share sealed to them). It cannot open
one update; ``threshold`` clients can (so the attack is real). A node refuses the
requests that would let the server isolate a mask. A buffer's step equals the plaintext
FedBuff step, with dropouts within the tolerance, and none beyond it.

The real node handlers, client mod and server aggregator run here without an engine,
each node with its own Flower ``Context``; local training is replaced by known updates."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import numpy as np
import pytest
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
from secagg_federation import WEIGHT, _Config

from fedpriv.crypto import CkksSecAgg, ckks, masking, packed, shares
from fedpriv.crypto.offset import offset_chunks
from fedpriv.crypto.records import Layout
from fedpriv.crypto.secagg_buffer import COMBINE, MASKED, BufferNode
from fedpriv.crypto.secagg_node import RECORD, STATE, SecAggNode
from fedpriv.errors import ConfigError
from fedpriv.strategies.horizontal.asynchronous import FedBuff

pytestmark = pytest.mark.usefixtures("task_identity")

N, T, K, SIZE = 6, 4, 3, 300


@dataclasses.dataclass
class BufferFederation:
    spec: CkksSecAgg
    keys: ckks.KeyPair
    strategy: FedBuff
    layout: Layout
    contexts: dict[int, Context]
    updates: dict[int, np.ndarray]
    received: list[Message] = dataclasses.field(default_factory=list)
    offline: set[int] = dataclasses.field(default_factory=set)
    sent: int = 0

    @classmethod
    def create(cls, seed: int = 0, pieces: int = 1) -> BufferFederation:
        spec = CkksSecAgg(threshold=T, preset="ckks-128-async", scale_bits=None, pieces=pieces)
        rng = np.random.default_rng(seed)
        nodes = range(1, N + 1)
        return cls(
            spec=spec,
            keys=ckks.make_keys(spec.params),
            strategy=FedBuff(buffer_size=K, server_lr=0.8),
            layout=Layout.of(ArrayRecord({"w": Array(np.zeros(SIZE, dtype=np.float32))})),
            contexts={k: Context(1, k, {}, RecordDict(), {}) for k in nodes},
            updates={k: rng.normal(0, 0.1, SIZE) for k in nodes},
        )

    @property
    def config(self) -> Any:
        return _Config(N, strategy=self.strategy)

    @property
    def mod(self) -> Any:
        (mod,) = self.spec.client_mods(self.config, self.keys.secret, self.layout)
        return mod

    def send(self, messages: list[Message]) -> list[Message]:
        handlers = {**self.spec.client_handlers(self.config)}
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node in self.offline:
                continue
            kind = message.metadata.message_type
            handler = self.train if kind == "train" else handlers[kind]
            try:
                reply = self.mod(message, self.contexts[node], handler)
            except ValueError as error:
                reply = Message(Error(code=1, reason=str(error)), reply_to=message)
            self.received.append(reply)
            replies.append(reply)
        return replies

    def train(self, msg: Message, context: Context) -> Message:
        """The 'training': the known update on top of the model sent."""
        sent = self.layout.flatten(msg.content.array_records["arrays"])
        local = ArrayRecord({"w": Array(sent + self.updates[context.node_id])})
        metrics = MetricRecord({WEIGHT: 10})
        return Message(RecordDict({"arrays": local, "metrics": metrics}), reply_to=msg)

    def aggregator(self) -> Any:
        aggregator = self.spec.async_aggregator(
            layout=self.layout,
            public=self.keys.public,
            weight_key=WEIGHT,
            strategy=self.strategy,
            num_clients=N,
        )
        nodes = sorted(self.contexts)
        aggregator.open(self.send, nodes=nodes, per_round=N, num_clients=N)
        return aggregator

    def updates_from(self, aggregator: Any, nodes: list[int]) -> list[Message]:
        """Each of ``nodes`` trains once on version 0; the server checks their replies."""
        base = ArrayRecord({"w": Array(np.zeros(SIZE, dtype=np.float32))})
        replies = []
        for node in nodes:
            self.sent += 1
            message = Message(
                RecordDict({"arrays": base, "config": ConfigRecord({})}),
                dst_node_id=node,
                message_type="train",
            )
            aggregator.stamp(self.sent, [message])
            (reply,) = self.send([message])
            assert aggregator.check(reply) is None
            replies.append(reply)
        return replies

    def offset(self, aggregator: Any) -> np.ndarray:
        """The encrypted offset, as a key holder decrypts it."""
        chunks = offset_chunks(aggregator.model(ArrayRecord()))
        return packed.decrypt(self.keys.secret, self.spec.params, chunks, [SIZE])

    def state(self, node: int) -> ConfigRecord:
        return self.contexts[node].state.config_records[STATE]

    def channel(self, me: int, peer: int) -> bytes:
        return masking.agree(self.state(me)["channel"], self.state(me)[f"channel/{peer}"])


def buffer_of(fed: BufferFederation, nodes: list[int], staleness: list[int]):
    aggregator = fed.aggregator()
    replies = fed.updates_from(aggregator, nodes)
    factors = [fed.strategy.update_factor(s, K) for s in staleness]
    for reply, factor in zip(replies, factors, strict=True):
        assert aggregator.take(reply, factor) is None
    assert aggregator.step() is False and aggregator.pending  # waits for idle nodes
    return aggregator, replies, factors


def test_a_buffer_step_equals_the_plaintext_fedbuff_step():
    fed = BufferFederation.create()
    aggregator, _, factors = buffer_of(fed, [1, 2, 3], [0, 0, 0])
    assert aggregator.settle(sorted(fed.contexts), force=False) == 1
    expected = sum(f * fed.updates[k] for f, k in zip(factors, [1, 2, 3], strict=True))
    # Values rounded to 2^-20, summed with factors η/K: well under 1e-6.
    np.testing.assert_allclose(fed.offset(aggregator), expected, atol=1e-6)


def test_stale_updates_are_weighted_to_2_to_the_minus_staleness_bits():
    """s(τ) = 1/sqrt(1+τ) is rounded to a multiple of 2^-8: the step is FedBuff's with
    those weights exactly, and off the unrounded one by at most the rounding."""
    fed = BufferFederation.create(seed=1)
    staleness = [0, 1, 3]
    aggregator, _, factors = buffer_of(fed, [4, 5, 6], staleness)
    assert aggregator.settle(sorted(fed.contexts), force=False) == 1
    unit = fed.strategy.server_lr / K
    rounded = [round(f / unit * 256) * unit / 256 for f in factors]
    nodes = [4, 5, 6]
    exact = sum(f * fed.updates[k] for f, k in zip(rounded, nodes, strict=True))
    np.testing.assert_allclose(fed.offset(aggregator), exact, atol=1e-6)
    unrounded = sum(f * fed.updates[k] for f, k in zip(factors, nodes, strict=True))
    bound = sum(unit / 512 * np.abs(fed.updates[k]) for k in nodes) + 1e-6
    assert np.all(np.abs(fed.offset(aggregator) - unrounded) <= bound)


def coalition_guess(fed: BufferFederation, reply: Message, coalition: list[int]) -> np.ndarray:
    """The coalition's best reconstruction of one update: the masked vector the server
    holds, minus the mask rebuilt from the shares sealed to the colluders."""
    target = reply.metadata.src_node_id
    sealed = reply.content.config_records[RECORD]
    mask_id = cast(int, sealed["mask"])
    nodes = [int(n) for n in cast(list[int], fed.state(coalition[0])["nodes"])]
    held = {}
    for node in coalition:
        token = cast(bytes, sealed[f"to/{node}"])
        plain = masking.unseal(fed.channel(node, target), (target, node, mask_id), token)
        held[nodes.index(node) + 1] = np.frombuffer(plain, dtype=np.uint32)
    mask = shares.combine(held, threshold=len(held) + 1 - fed.spec.pieces, pieces=fed.spec.pieces,
                          size=SIZE)  # fmt: skip
    masked = reply.content.array_records["arrays"][MASKED].numpy().astype(np.uint64)
    units = shares.from_field((masked + shares.PRIME - mask) % shares.PRIME)
    return units * 2.0**-fed.spec.step_bits


def test_server_and_threshold_minus_one_clients_cannot_open_an_update():
    fed = BufferFederation.create()
    aggregator, replies, _ = buffer_of(fed, [1, 2, 3], [0, 0, 0])
    aggregator.settle(sorted(fed.contexts), force=False)
    guess = coalition_guess(fed, replies[0], coalition=[2, 3, 4][: T - 1])
    truth = fed.updates[1]
    assert np.abs(guess - truth).mean() > 100 * np.abs(truth).mean()
    assert abs(np.corrcoef(guess, truth)[0, 1]) < 0.3


def test_server_and_threshold_clients_can_open_an_update():
    """One more colluder succeeds: the test above can fail."""
    fed = BufferFederation.create()
    _, replies, _ = buffer_of(fed, [1, 2, 3], [0, 0, 0])
    guess = coalition_guess(fed, replies[0], coalition=[2, 3, 4, 5][:T])
    np.testing.assert_allclose(guess, fed.updates[1], atol=2.0**-20)


def combine_request(aggregator: Any, entries, weights: list[int], node: int) -> Message:
    values: dict[str, Any] = {
        "buffer": 99,
        "sources": [e[0] for e in entries],
        "masks": [e[1] for e in entries],
        "weights": weights,
        "refresher": 1,
    }
    values.update({f"from/{i}": e[3][f"to/{node}"] for i, e in enumerate(entries)})
    content = RecordDict({RECORD: ConfigRecord(values)})
    return Message(content, dst_node_id=node, message_type=COMBINE)


def refused(fed: BufferFederation, message: Message) -> str:
    (reply,) = fed.send([message])
    assert reply.has_error(), "the node answered"
    return reply.error.reason


def test_a_node_combines_each_mask_once():
    """A server asking again for the same masks with other weights would get a second
    equation in them; with two, it could solve for one mask."""
    fed = BufferFederation.create()
    aggregator, _, _ = buffer_of(fed, [1, 2, 3], [0, 0, 0])
    ((entries, _),) = aggregator.closed
    (first,) = fed.send([combine_request(aggregator, entries, [256, 256, 256], node=5)])
    assert not first.has_error()
    again = combine_request(aggregator, entries, [512, 256, 256], node=5)
    assert "combined before" in refused(fed, again)


def test_a_node_refuses_a_short_buffer_and_a_zero_weight():
    fed = BufferFederation.create()
    aggregator, _, _ = buffer_of(fed, [1, 2, 3], [0, 0, 0])
    ((entries, _),) = aggregator.closed
    short = combine_request(aggregator, entries[:2], [256, 256], node=4)
    assert "fewer than buffer_size=3" in refused(fed, short)
    zero = combine_request(aggregator, entries, [256, 0, 0], node=4)
    assert "must be >= 1" in refused(fed, zero)
    # Neither refusal used the masks up: the honest request is still answered.
    (reply,) = fed.send([combine_request(aggregator, entries, [256, 256, 256], node=4)])
    assert not reply.has_error()


def test_dropouts_within_the_tolerance_still_unmask():
    fed = BufferFederation.create()
    aggregator, _, factors = buffer_of(fed, [1, 2, 3], [0, 0, 0])
    fed.offline |= {5, 6}  # N - T nodes gone: T still combine
    assert aggregator.settle(sorted(fed.contexts), force=False) == 1
    expected = sum(f * fed.updates[k] for f, k in zip(factors, [1, 2, 3], strict=True))
    np.testing.assert_allclose(fed.offset(aggregator), expected, atol=1e-6)


def test_too_many_dropouts_drop_the_buffer_and_keep_the_model():
    fed = BufferFederation.create()
    aggregator, _, _ = buffer_of(fed, [1, 2, 3], [0, 0, 0])
    fed.offline |= {4, 5, 6}
    assert aggregator.settle(sorted(fed.contexts), force=False) == 0
    assert not aggregator.pending and aggregator.saved == []  # version 0: no offset
    assert aggregator.costs["refused"] == 1


def test_too_few_idle_nodes_wait_until_forced():
    fed = BufferFederation.create()
    aggregator, _, _ = buffer_of(fed, [1, 2, 3], [0, 0, 0])
    assert aggregator.settle([1, 2, 3], force=False) == 0 and aggregator.pending
    assert aggregator.settle([1, 2, 3], force=True) == 0 and not aggregator.pending


def test_a_masked_update_reveals_nothing_to_a_key_holder():
    """crypto=ckks's weakness was one key holder reading a relayed update; here what is
    relayed is q + z mod p with z uniform: the masked values are uniform too."""
    fed = BufferFederation.create()
    _, replies, _ = buffer_of(fed, [1, 2, 3], [0, 0, 0])
    masked = replies[0].content.array_records["arrays"][MASKED].numpy().astype(np.float64)
    assert abs(np.corrcoef(masked, fed.updates[1])[0, 1]) < 0.3
    assert 0.4 < masked.mean() / shares.PRIME < 0.6  # spread over the field, not near 0


def test_the_node_handlers_are_those_of_the_scheme():
    handlers = CkksSecAgg().client_handlers(_Config(N, strategy=FedBuff()))
    assert set(BufferNode(3, 1).handlers()) <= set(handlers)
    assert set(SecAggNode().handlers()) <= set(handlers)


def test_coded_shares_halve_the_bytes_and_keep_the_guarantee():
    """pieces=2: each sealed share is half the update; unmasking then needs
    threshold - 1 + pieces = 5 of 6 nodes, and the same coalition still learns nothing."""
    fed = BufferFederation.create(pieces=2)
    aggregator, replies, factors = buffer_of(fed, [1, 2, 3], [0, 0, 0])
    one = BufferFederation.create()
    _, single, _ = buffer_of(one, [1, 2, 3], [0, 0, 0])

    def share_bytes(reply):
        return len(reply.content.config_records[RECORD]["to/2"])

    assert share_bytes(replies[0]) < 0.55 * share_bytes(single[0])
    fed.offline |= {6}  # one dropout: 5 still unmask
    assert aggregator.settle(sorted(fed.contexts), force=False) == 1
    expected = sum(f * fed.updates[k] for f, k in zip(factors, [1, 2, 3], strict=True))
    np.testing.assert_allclose(fed.offset(aggregator), expected, atol=1e-6)
    guess = coalition_guess(fed, replies[0], coalition=[2, 3, 4][: T - 1])
    assert abs(np.corrcoef(guess, fed.updates[1])[0, 1]) < 0.3
    opened = coalition_guess(fed, replies[0], coalition=[2, 3, 4, 5, 6][: T + 1])
    np.testing.assert_allclose(opened, fed.updates[1], atol=2.0**-20)


def test_coded_shares_with_too_many_dropouts_drop_the_buffer():
    fed = BufferFederation.create(pieces=2)
    aggregator, _, _ = buffer_of(fed, [1, 2, 3], [0, 0, 0])
    fed.offline |= {5, 6}  # 4 left, 5 needed
    assert aggregator.settle(sorted(fed.contexts), force=False) == 0
    assert aggregator.costs["refused"] == 1 and aggregator.saved == []


def test_more_pieces_than_the_nodes_can_decode_is_refused_naming_both():
    fed = BufferFederation.create(pieces=4)  # threshold 4 - 1 + 4 = 7 > 6 nodes
    with pytest.raises(ConfigError, match=r"crypto\.threshold=4 with crypto\.pieces=4"):
        fed.aggregator()
