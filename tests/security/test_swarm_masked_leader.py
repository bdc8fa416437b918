"""A swarm leader's merge under ``crypto=ckks_secagg``, without an engine: the real peer
mod (:class:`SwarmSecAggMod`), the real key-ceremony handlers and the relay's
:class:`MaskedMerge`, each peer with its own Flower ``Context``, messages delivered in
process. Training is replaced by a known model, which is what the leader tries to read.

The merge equals the plaintext weighted mean (independent numpy); the leader, with its
own keys and shares, the CKKS secret every peer holds and everything the relay holds,
cannot open one peer's model, while ``threshold`` colluders can (the attack is real);
a dropout within the tolerance still merges; beyond it nothing is revealed."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict

from fedpriv import load_config
from fedpriv.crypto import masking, packed
from fedpriv.crypto.records import Layout, chunks_of
from fedpriv.crypto.secagg_node import RECORD, STATE, SecAggNode
from fedpriv.crypto.secagg_peers import CONTRIBUTION, SUM, contribution
from fedpriv.errors import ConfigError
from fedpriv.strategies.swarm.masked import MaskedMerge, masked_mods

pytestmark = pytest.mark.usefixtures("task_identity")

N, SIZE, LEADER = 4, 300, 1
SWARM = ("family=swarm", "strategy=leader", "swarm.consensus=false", f"num_clients={N}")


@dataclasses.dataclass
class Swarm:
    """Four peers (nodes 1..4), the relay's MaskedMerge, and every message and reply."""

    config: Any
    secret: bytes
    layout: Layout
    merge: MaskedMerge
    contexts: dict[int, Context]
    models: dict[int, np.ndarray]
    weights: dict[int, int]
    offline: set[int] = dataclasses.field(default_factory=set)
    received: list[Message] = dataclasses.field(default_factory=list)

    @classmethod
    def create(cls, seed: int = 0) -> Swarm:
        config = load_config([*SWARM, "crypto=ckks_secagg", "strategy.merge=weighted_mean"])
        keys = config.crypto.make_keys()
        layout = Layout.of(ArrayRecord({"w": Array(np.zeros(SIZE, dtype=np.float32))}))
        rng = np.random.default_rng(seed)
        nodes = range(1, N + 1)
        swarm = cls(
            config=config,
            secret=keys.secret,
            layout=layout,
            merge=MaskedMerge(config, layout, keys.public),
            contexts={k: Context(1, k, {}, RecordDict(), {}) for k in nodes},
            models={k: rng.normal(0, 0.5, SIZE) for k in nodes},
            weights={k: int(rng.integers(20, 500)) for k in nodes},
        )
        swarm.merge.open(swarm.send, sorted(nodes))
        return swarm

    @property
    def mod(self) -> Any:
        (mod,) = masked_mods(self.config, self.secret, self.layout)
        return mod

    def send(self, messages: list[Message]) -> list[Message]:
        handlers = {**SecAggNode().handlers(), "train.swarm": self.train, "query.lead": self.lead}
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node in self.offline:
                continue
            handler = handlers[message.metadata.message_type]
            try:
                if message.metadata.message_type.startswith("secagg", 6):
                    reply = handler(message, self.contexts[node])
                else:
                    reply = self.mod(message, self.contexts[node], handler)
            except ValueError as error:
                reply = Message(Error(code=1, reason=str(error)), reply_to=message)
            self.received.append(reply)
            replies.append(reply)
        return replies

    def train(self, msg: Message, context: Context) -> Message:
        """The 'training': this peer's known model, pre-weighted, for the mod."""
        node = context.node_id
        values = contribution(self.weights[node] * self.models[node])
        return Message(RecordDict({CONTRIBUTION: values}), reply_to=msg)

    def lead(self, msg: Message, context: Context) -> Message:
        """The leader's handler: what the mod hands it is all it gets."""
        return Message(RecordDict({SUM: msg.content.array_records[SUM]}), reply_to=msg)

    def sync(self, sync: int, drop: set[int] = frozenset()) -> tuple[Any, dict[int, Message]]:
        """One sync: stamp, collect the masked models (``drop`` dropping out after the
        ceremony), unmask, let the leader merge. (The merge or the refusal, the replies.)"""
        configs = {n: ConfigRecord({"round": sync}) for n in sorted(self.contexts)}
        self.merge.stamp(sync, configs)
        messages = [
            Message(RecordDict({"config": c}), dst_node_id=n, message_type="train.swarm")
            for n, c in configs.items()
        ]
        self.offline |= set(drop)
        good = {
            r.metadata.src_node_id: r
            for r in self.send(messages)
            if not r.has_error() and self.merge.check(r) is None
        }
        correction, refusal = self.merge.correction(sync, list(good.values()))
        if correction is None:
            return refusal, good
        records = MaskedMerge.lead_records(good, correction)
        ask = Message(RecordDict(records), dst_node_id=LEADER, message_type="query.lead")
        (answer,) = self.send([ask])
        total = answer.content.array_records[SUM]["values"].numpy()
        return total / sum(self.weights[n] for n in good), good

    def state(self, node: int) -> ConfigRecord:
        return self.contexts[node].state.config_records[STATE]


def weighted_mean(swarm: Swarm, nodes: list[int]) -> np.ndarray:
    """The plaintext merge (the oracle): numpy's weighted average."""
    return np.average([swarm.models[k] for k in nodes], axis=0,
                      weights=[swarm.weights[k] for k in nodes])  # fmt: skip


def test_masked_merge_equals_the_plaintext_weighted_mean():
    swarm = Swarm.create()
    merged, good = swarm.sync(1)
    assert sorted(good) == [1, 2, 3, 4]
    np.testing.assert_allclose(merged, weighted_mean(swarm, [1, 2, 3, 4]), atol=1e-6)
    assert swarm.merge.threshold == 3  # null: a majority of the 4 peers


def open_model(swarm: Swarm, reply: Message, target: int, coalition: list[int], sync: int = 1):
    """The coalition's best reading of ``target``'s pre-weighted model: decrypt its
    ciphertext alone (every peer holds the CKKS key), remove its self mask (rebuilt by the
    relay at unmasking), and every pair mask whose secret the coalition holds or can
    rebuild from its shares of ``target``'s mask secret."""
    bits, quantizer = swarm.merge.aggregator.quantizer.bits, swarm.merge.aggregator.quantizer
    record = reply.content.array_records[CONTRIBUTION]
    sizes = swarm.layout.chunk_sizes(1, swarm.config.crypto.params.packed_values)
    values = packed.decrypt(swarm.secret, swarm.config.crypto.params, chunks_of(record), sizes)
    masked = np.rint(values).astype(np.int64).astype(np.uint64)
    answers = [
        r.content.config_records[RECORD]
        for r in swarm.received
        if r.metadata.message_type == "query.secagg_unmask" and r.has_content()
    ]
    seed = masking.combine([cast(bytes, a[f"self/{target}"]) for a in answers])
    masks = masking.self_mask(seed, sync, SIZE, bits)
    try:
        secret = masking.combine([cast(bytes, swarm.state(c)[f"held/{target}"]) for c in coalition])
    except ValueError:  # too few shares: nothing rebuilt
        secret = b""
    rebuilt = masking.KeyPair.generate().secret if not secret.startswith(b"-----") else secret
    for peer in sorted(swarm.contexts):
        if peer == target:
            continue
        if peer in coalition:
            state = swarm.state(peer)
            agreed = masking.agree(state["mask"], state[f"mask/{target}"])
        else:  # with too few shares, the rebuilt secret is not the target's
            agreed = masking.agree(rebuilt, swarm.state(coalition[0])[f"mask/{peer}"])
        masks = masks + masking.pair_mask(agreed, target, peer, sync, SIZE, bits)
    return quantizer.decode((masked - masks) & np.uint64((1 << bits) - 1))


@pytest.mark.parametrize("coalition", [[LEADER], [LEADER, 3]])
def test_the_leader_and_the_relay_cannot_open_one_peers_model(coalition):
    """The leader holds the CKKS key, its own mask keys and shares, every ciphertext it
    merges; colluding with the relay it also has every unmasking answer, and with one
    more peer (``threshold - 1`` peers in all) that peer's keys and shares. One peer's
    model stays masked by the pair it shares with the remaining honest peer."""
    swarm = Swarm.create()
    _, good = swarm.sync(1)
    target = 2
    truth = swarm.weights[target] * swarm.models[target]
    guess = open_model(swarm, good[target], target, coalition=coalition)
    assert np.abs(guess - truth).mean() > 100 * np.abs(truth).mean()
    assert abs(np.corrcoef(guess, truth)[0, 1]) < 0.3


def test_threshold_colluders_can_open_one_peers_model():
    """The same attack with ``threshold`` = 3 colluders succeeds: the test above can fail."""
    swarm = Swarm.create()
    _, good = swarm.sync(1)
    target = 2
    truth = swarm.weights[target] * swarm.models[target]
    guess = open_model(swarm, good[target], target, coalition=[LEADER, 3, 4])
    np.testing.assert_allclose(guess, truth, atol=swarm.merge.aggregator.quantizer.step)


def test_a_dropout_within_the_tolerance_still_merges():
    swarm = Swarm.create(seed=1)
    merged, good = swarm.sync(1, drop={4})
    assert sorted(good) == [1, 2, 3]
    np.testing.assert_allclose(merged, weighted_mean(swarm, [1, 2, 3]), atol=1e-6)
    assert swarm.merge.aggregator.retired == {4}  # its mask secret is out: never again
    merged, good = swarm.sync(2)  # the next sync merges the three without it
    assert sorted(good) == [1, 2, 3]
    np.testing.assert_allclose(merged, weighted_mean(swarm, [1, 2, 3]), atol=1e-6)


def test_dropouts_beyond_the_tolerance_refuse_the_merge_and_reveal_nothing():
    swarm = Swarm.create()
    refusal, good = swarm.sync(1, drop={3, 4})
    assert sorted(good) == [1, 2]
    assert "2 of the round's 4 clients" in refusal and "threshold=3" in refusal
    assert not any(r.metadata.message_type == "query.secagg_unmask" for r in swarm.received)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (("crypto=ckks",), "use crypto=ckks_secagg with strategy=leader"),
        (("crypto=ckks_secagg", "strategy=gossip"), "a neighbour average cannot remove them"),
        (("crypto=ckks_secagg", "strategy=dinno"), "a neighbour average cannot remove them"),
        (("crypto=ckks_secagg", "strategy.merge=coordinate_median"), "use strategy.merge=mean"),
        (("crypto=ckks_secagg", "swarm.consensus=true"), "set swarm.consensus=false"),
        (("crypto=ckks_secagg", "engine=deployment"), "set crypto.keys_dir=<the directory"),
    ],
)
def test_refused_swarm_encryption_says_why(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load_config([*SWARM, *overrides])
