"""FedBuff under ``crypto=ckks_secagg`` (:mod:`fedpriv.crypto.secagg_buffer`) against
the coalition it is built for: the server (every message and reply it relays) plus
``threshold - 1`` clients (their keys and every share sealed to them). It cannot open
one update; ``threshold`` clients can (so the attack is real). A node refuses the
requests that would let the server isolate a mask, and a server that splits the nodes
to get two sums over one mask needs the colluders the docs say. A buffer's step equals
the plaintext FedBuff step, with dropouts within the tolerance, and none beyond it.

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
from fedpriv.crypto.secagg_buffer import ANSWER_TAG, COMBINE, MASKED, SHARE_TAG, BufferNode
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
            strategy=FedBuff(buffer_size=K, server_lr=0.8, staleness="constant"),
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


def buffer_of(fed: BufferFederation, nodes: list[int]):
    """``nodes`` each send one update into a fresh aggregator's buffer (full when K)."""
    aggregator = fed.aggregator()
    replies = fed.updates_from(aggregator, nodes)
    factor = fed.strategy.update_factor(0, K)
    for reply in replies:
        assert aggregator.take(reply, factor) is None
    return aggregator, replies, factor


def step_of(fed: BufferFederation, factor: float, nodes: list[int]) -> np.ndarray:
    """The plaintext FedBuff step over ``nodes``' updates, in float64 (the oracle)."""
    return factor * np.sum([fed.updates[k] for k in nodes], axis=0)


def test_a_buffer_step_equals_the_plaintext_fedbuff_step():
    fed = BufferFederation.create()
    aggregator, _, factor = buffer_of(fed, [1, 2, 3])
    assert aggregator.step() is False and aggregator.pending  # waits for idle nodes
    assert aggregator.settle(sorted(fed.contexts), force=False) == 1
    # Values rounded to 2^-20 and summed: well under 1e-6 off.
    np.testing.assert_allclose(fed.offset(aggregator), step_of(fed, factor, [1, 2, 3]), atol=1e-6)


def test_a_clients_second_update_goes_to_the_next_buffer():
    """A fast client must not fill two places of one buffer: the others in it could
    subtract theirs and read the rest."""
    fed = BufferFederation.create()
    aggregator = fed.aggregator()
    replies = fed.updates_from(aggregator, [1, 2, 1, 3, 2, 4])
    for reply in replies:
        assert aggregator.take(reply, fed.strategy.update_factor(0, K)) is None
    (first, _), (second, _) = aggregator.closed
    assert [e[0] for e in first] == [1, 2, 3] and [e[0] for e in second] == [1, 2, 4]
    assert aggregator.settle(sorted(fed.contexts), force=False) == 2


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
        header = (SHARE_TAG, target, node, mask_id)
        plain = masking.unseal(fed.channel(node, target), header, token)
        held[nodes.index(node) + 1] = np.frombuffer(plain, dtype=np.uint32)
    pieces = fed.spec.pieces
    mask = shares.combine(held, len(held) + 1 - pieces, pieces, size=SIZE)
    return units_of(reply, mask) * 2.0**-fed.spec.step_bits


def units_of(reply: Message, mask: np.ndarray) -> np.ndarray:
    masked = reply.content.array_records["arrays"][MASKED].numpy().astype(np.uint64)
    return shares.from_field((masked + shares.PRIME - mask) % shares.PRIME).astype(float)


def test_server_and_threshold_minus_one_clients_cannot_open_an_update():
    fed = BufferFederation.create()
    aggregator, replies, _ = buffer_of(fed, [1, 2, 3])
    aggregator.settle(sorted(fed.contexts), force=False)
    guess = coalition_guess(fed, replies[0], coalition=[2, 3, 4][: T - 1])
    truth = fed.updates[1]
    assert np.abs(guess - truth).mean() > 100 * np.abs(truth).mean()
    assert abs(np.corrcoef(guess, truth)[0, 1]) < 0.3


def test_server_and_threshold_clients_can_open_an_update():
    """One more colluder succeeds: the test above can fail."""
    fed = BufferFederation.create()
    _, replies, _ = buffer_of(fed, [1, 2, 3])
    guess = coalition_guess(fed, replies[0], coalition=[2, 3, 4, 5][:T])
    np.testing.assert_allclose(guess, fed.updates[1], atol=2.0**-20)


def combine_request(entries, node: int, buffer: int = 99, refresher: int = 1) -> Message:
    """The server's combine request to ``node`` over ``entries`` (client, mask, shares)."""
    values: dict[str, Any] = {
        "buffer": buffer,
        "sources": [e[0] for e in entries],
        "masks": [e[1] for e in entries],
        "refresher": refresher,
    }
    values.update({f"from/{i}": e[2][f"to/{node}"] for i, e in enumerate(entries)})
    content = RecordDict({RECORD: ConfigRecord(values)})
    return Message(content, dst_node_id=node, message_type=COMBINE)


def refused(fed: BufferFederation, message: Message) -> str:
    (reply,) = fed.send([message])
    assert reply.has_error(), "the node answered"
    return reply.error.reason


def test_a_node_combines_each_mask_once():
    """Asked again for the same masks (or an older one of a client), a node refuses:
    a second equation over one mask could isolate it."""
    fed = BufferFederation.create()
    aggregator, _, _ = buffer_of(fed, [1, 2, 3])
    ((entries, _),) = aggregator.closed
    (first,) = fed.send([combine_request(entries, node=5)])
    assert not first.has_error()
    assert "not newer than the last" in refused(fed, combine_request(entries, node=5, buffer=100))


def test_a_node_refuses_a_short_buffer_or_one_client_twice():
    fed = BufferFederation.create()
    aggregator = fed.aggregator()
    replies = fed.updates_from(aggregator, [1, 2, 3, 1])
    entries = [(r.metadata.src_node_id, r.content.config_records[RECORD]["mask"],
                r.content.config_records[RECORD]) for r in replies]  # fmt: skip
    assert "fewer than buffer_size=3" in refused(fed, combine_request(entries[:2], node=4))
    twice = [entries[0], entries[1], entries[3]]  # client 1's two updates and client 2's
    assert "fewer than buffer_size=3" in refused(fed, combine_request(twice, node=4))
    assert "one client twice" in refused(fed, combine_request(entries, node=4))
    # None of the refusals used the masks up: the honest request is still answered.
    (reply,) = fed.send([combine_request(entries[:3], node=4)])
    assert not reply.has_error()


def test_a_node_refuses_a_sealed_token_of_another_kind_as_a_mask_share():
    """Combined answers are sealed on the same channel as mask shares: without a tag in
    the header, node 2's answer for buffer 99 sealed to node 4 would pass for node 2's
    share of mask 99 (the same (2, 4, 99))."""
    fed = BufferFederation.create()
    aggregator, _, _ = buffer_of(fed, [1, 2, 3])
    ((entries, _),) = aggregator.closed
    answer = fed.send([combine_request(entries, node=2, refresher=4)])[0]
    token = answer.content.config_records[RECORD]["to/4"]  # node 2's answer, sealed to 4
    forged = [entries[0], (2, 99, ConfigRecord({"to/4": token})), entries[2]]
    assert "addressed to another" in refused(fed, combine_request(forged, node=4))


def test_a_server_splitting_the_nodes_needs_2t_minus_n_colluders():
    """A server that breaks the protocol asks two disjoint sets of honest nodes for sums
    over one client's mask: with colluders c >= 2·threshold - n (here 2 of 6,
    threshold 4) it isolates the mask; with one colluder there are not enough honest
    nodes for two disjoint sets, and each node combines a mask once."""
    fed = BufferFederation.create()
    aggregator = fed.aggregator()
    # Victim 1, honest 2; colluders 5 and 6 send updates whose masks they know.
    replies = {r.metadata.src_node_id: r for r in fed.updates_from(aggregator, [1, 2, 5, 6])}
    second = fed.updates_from(aggregator, [5])[0]
    known = {  # a colluder's own mask: its masked update minus its update
        id(r): (r.content.array_records["arrays"][MASKED].numpy().astype(np.uint64)
                + shares.PRIME - shares.to_field(np.rint(fed.updates[5 if r is second else
                  r.metadata.src_node_id] * 2**20).astype(np.int64))) % shares.PRIME
        for r in (replies[5], replies[6], second)
    }  # fmt: skip

    def entry(r):
        return (r.metadata.src_node_id, r.content.config_records[RECORD]["mask"],
                r.content.config_records[RECORD])  # fmt: skip

    def decode(buffer, entries, answering):
        asks = [combine_request(entries, node, buffer=buffer, refresher=5) for node in answering]
        answers = {}
        nodes = [int(n) for n in cast(list[int], fed.state(5)["nodes"])]
        for reply in fed.send(asks):
            if reply.has_error():
                continue
            node = reply.metadata.src_node_id
            plain = masking.unseal(fed.channel(5, node), (ANSWER_TAG, node, 5, buffer),
                                   reply.content.config_records[RECORD]["to/5"])  # fmt: skip
            length = int.from_bytes(plain[:4], "little")
            answers[nodes.index(node) + 1] = np.frombuffer(plain[4 + length :], dtype=np.uint32)
        return shares.combine(answers, T, size=SIZE) if len(answers) >= T else None

    # Sum 1 over {victim, 2, colluder 5}, from nodes {1, 2} and the colluders.
    x = decode(1, [entry(replies[1]), entry(replies[2]), entry(replies[5])], [1, 2, 5, 6])
    # Sum 2 over {2, colluder 6, colluder 5 again}, from the other honest nodes {3, 4}
    # and the colluders, who answer whatever they are asked (their records forgotten).
    for colluder in (5, 6):
        state = fed.state(colluder)
        for key in [k for k in state if k.startswith("combined/")]:
            del state[key]
    y = decode(2, [entry(replies[2]), entry(replies[6]), entry(second)], [3, 4, 5, 6])
    assert x is not None and y is not None  # c = 2 = 2·4 - 6: two disjoint sets exist
    p = shares.PRIME
    mask_2 = (y + 2 * p - known[id(replies[6])] - known[id(second)]) % p
    victim = (x + 2 * p - mask_2 - known[id(replies[5])]) % p
    guess = units_of(replies[1], victim) * 2.0**-20
    np.testing.assert_allclose(guess, fed.updates[1], atol=2.0**-20)
    # With one colluder (6), the second sum needs 3 honest nodes besides {1, 2}: only
    # 3 and 4 are left, and 1 and 2 refuse to combine client 2's mask again.
    fed2 = BufferFederation.create()
    aggregator2 = fed2.aggregator()
    r2 = {r.metadata.src_node_id: r for r in fed2.updates_from(aggregator2, [1, 2, 5, 6])}
    extra = fed2.updates_from(aggregator2, [6])[0]
    ents = {k: (k, r.content.config_records[RECORD]["mask"], r.content.config_records[RECORD])
            for k, r in r2.items()}  # fmt: skip
    first = fed2.send([combine_request([ents[1], ents[2], ents[5]], n, 1, 6) for n in [1, 2, 5, 6]])
    assert not any(r.has_error() for r in first)
    again = [ents[2], ents[6], (6, extra.content.config_records[RECORD]["mask"],
             extra.content.config_records[RECORD])]  # fmt: skip
    state = fed2.state(6)
    for key in [k for k in state if k.startswith("combined/")]:
        del state[key]
    answered = fed2.send([combine_request(again, n, 2, 6) for n in [1, 2, 3, 4, 6]])
    assert sum(not r.has_error() for r in answered) < T  # 3, 4 and 6: one short


def test_dropouts_within_the_tolerance_still_unmask():
    fed = BufferFederation.create()
    aggregator, _, factor = buffer_of(fed, [1, 2, 3])
    fed.offline |= {5, 6}  # N - T nodes gone: T still combine
    assert aggregator.settle(sorted(fed.contexts), force=False) == 1
    np.testing.assert_allclose(fed.offset(aggregator), step_of(fed, factor, [1, 2, 3]), atol=1e-6)


def test_too_many_dropouts_drop_the_buffer_and_keep_the_model():
    fed = BufferFederation.create()
    aggregator, _, _ = buffer_of(fed, [1, 2, 3])
    fed.offline |= {4, 5, 6}
    assert aggregator.settle(sorted(fed.contexts), force=False) == 0
    assert not aggregator.pending and aggregator.saved == []  # version 0: no offset
    assert aggregator.costs["refused"] == 1 and aggregator.costs["updates_dropped"] == 3


def test_too_few_idle_nodes_wait_until_forced():
    fed = BufferFederation.create()
    aggregator, _, _ = buffer_of(fed, [1, 2, 3])
    assert aggregator.settle([1, 2, 3], force=False) == 0 and aggregator.pending
    assert aggregator.settle([1, 2, 3], force=True) == 0 and not aggregator.pending


def test_a_masked_update_reveals_nothing_to_a_key_holder():
    """crypto=ckks's weakness was one key holder reading a relayed update; here what is
    relayed is q + z mod p with z uniform: the masked values are uniform too."""
    fed = BufferFederation.create()
    _, replies, _ = buffer_of(fed, [1, 2, 3])
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
    aggregator, replies, factor = buffer_of(fed, [1, 2, 3])
    _, single, _ = buffer_of(BufferFederation.create(), [1, 2, 3])

    def share_bytes(reply):
        return len(reply.content.config_records[RECORD]["to/2"])

    assert share_bytes(replies[0]) < 0.55 * share_bytes(single[0])
    fed.offline |= {6}  # one dropout: 5 still unmask
    assert aggregator.settle(sorted(fed.contexts), force=False) == 1
    np.testing.assert_allclose(fed.offset(aggregator), step_of(fed, factor, [1, 2, 3]), atol=1e-6)
    guess = coalition_guess(fed, replies[0], coalition=[2, 3, 4][: T - 1])
    assert abs(np.corrcoef(guess, fed.updates[1])[0, 1]) < 0.3
    opened = coalition_guess(fed, replies[0], coalition=[2, 3, 4, 5, 6][: T + 1])
    np.testing.assert_allclose(opened, fed.updates[1], atol=2.0**-20)


def test_coded_shares_with_too_many_dropouts_drop_the_buffer():
    fed = BufferFederation.create(pieces=2)
    aggregator, _, _ = buffer_of(fed, [1, 2, 3])
    fed.offline |= {5, 6}  # 4 left, 5 needed
    assert aggregator.settle(sorted(fed.contexts), force=False) == 0
    assert aggregator.costs["refused"] == 1 and aggregator.saved == []


def test_more_pieces_than_the_nodes_can_decode_is_refused_naming_both():
    fed = BufferFederation.create(pieces=4)  # threshold 4 - 1 + 4 = 7 > 6 nodes
    with pytest.raises(ConfigError, match=r"crypto\.threshold=4 with crypto\.pieces=4"):
        fed.aggregator()
