"""A client tries to rewrite another client's privacy history through a resume.

Each train reply carries the node's state (its Opacus accountant history) to the
server, which gives it back when a killed run resumes, so ε keeps composing. A hostile
client puts another partition's ID on the state it reports, with an empty history: if
the server keyed states by that claim, the victim's node would get the empty history
back on resume and its ε would restart at zero; if the restore message carried every
node's state, each node would read everybody's history.

The nodes here run the real node side (``NodeStateMod``, ``restore_node``, Flower
``Context`` s) and the server the real ``RunContext``, over the in-process grid, which
delivers each message to its node's handlers; the replies arrive in the order the test
sets (the hostile reply last, after the victim's).
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedpriv.errors import SimulationError
from fedpriv.privacy.accounting import compose, load_history, save_history
from fedpriv.results import RunDirectory
from fedpriv.runtime.checkpoint import NODE_STATE, RESTORE, Checkpoint, NodeStateMod, restore_node
from fedpriv.runtime.context import RunContext
from fedpriv.runtime.inprocess import InProcessGrid
from fedpriv.runtime.resume import resume, save_checkpoint

pytestmark = pytest.mark.usefixtures("task_identity")

VICTIM, HOSTILE = 0, 2
#: Each partition's DP-SGD round: a σ no other partition has, so a message that
#: carries another partition's history is easy to see.
ROUND = {0: (1.25, 0.1, 30), 1: (2.5, 0.1, 30), 2: (5.0, 0.1, 30)}


def train(msg: Message, context: Context) -> Message:
    """What a node's training leaves behind: one more round in its accountant history."""
    partition = int(context.node_config["partition-id"])
    save_history(context, compose(load_history(context), ROUND[partition]))
    metrics = MetricRecord({"partition-id": partition, "num-examples": 10})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def forge(reply: Message) -> Message:
    """The attack: the reply's node state claims the victim's partition, history empty."""
    reply.content[NODE_STATE] = ConfigRecord(
        {
            "partition-id": VICTIM,
            "fedpriv.dp/noise_multipliers": [],
            "fedpriv.dp/sample_rates": [],
            "fedpriv.dp/steps": [],
        }
    )
    return reply


class NodeGrid(InProcessGrid):
    """In-process nodes ``first_node + p`` for the partitions ``p`` in ``ROUND``, running
    the real node side; the replies to each pull come back in partition order (the
    hostile one last). The hostile node forges its state in ``lying_rounds``. Keeps
    what was sent."""

    def __init__(self, first_node: int, lying_rounds: frozenset[int] = frozenset()) -> None:
        self.first_node, self.lying_rounds = first_node, lying_rounds
        nodes = [first_node + p for p in ROUND]
        super().__init__(
            self.node, len(nodes), node_ids=nodes, order=lambda m: sorted(m, key=self.partition)
        )
        self.sent: list[Message] = []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.sent += messages
        return super().push_messages(messages)

    def partition(self, message: Message) -> int:
        return message.metadata.dst_node_id - self.first_node

    def node(self, message: Message, context: Context) -> Message:
        if message.metadata.message_type == RESTORE:
            return restore_node(message, context)
        reply = NodeStateMod()(message, context, train)
        server_round = int(message.content.config_records["config"]["server-round"])
        if self.partition(message) == HOSTILE and server_round in self.lying_rounds:
            reply = forge(reply)
        return reply


def rounds_then_resume(make_config, tmp_path, rounds: int, lying_rounds: set[int]) -> NodeGrid:
    """``rounds`` rounds with the hostile client, a checkpoint, then a resume on fresh
    nodes; returns the fresh nodes."""
    config = make_config("num_clients=3", "privacy=dp_sgd", "engine.round_timeout_s=2")
    out = RunDirectory(tmp_path / "run")
    ctx = RunContext(config, out)
    grid = NodeGrid(first_node=100, lying_rounds=frozenset(lying_rounds))
    for server_round in range(1, rounds + 1):
        ctx.start_round()
        settings = ConfigRecord({"server-round": server_round})
        messages = [
            Message(RecordDict({"config": settings}), dst_node_id=node, message_type="train")
            for node in grid.contexts
        ]
        ctx.exchange.send_and_receive(grid, messages)
    save_checkpoint(ctx, rounds, {"arrays": ArrayRecord()})

    checkpoint = Checkpoint.load(out.path)
    assert checkpoint is not None
    resumed = RunContext(config, out, checkpoint=checkpoint)
    fresh = NodeGrid(first_node=200)  # a resumed run's nodes: new IDs, empty state
    resume(resumed, fresh)
    return fresh


def test_a_client_cannot_overwrite_another_clients_history(make_config, tmp_path):
    fresh = rounds_then_resume(make_config, tmp_path, rounds=2, lying_rounds={2})
    two_rounds = {p: compose([r], r) for p, r in ROUND.items()}
    assert load_history(fresh.contexts[200 + VICTIM]) == two_rounds[VICTIM]  # not emptied
    assert load_history(fresh.contexts[201]) == two_rounds[1]
    # The liar's own forged state was not kept either: it gets its round-1 history.
    assert load_history(fresh.contexts[200 + HOSTILE]) == [ROUND[HOSTILE]]


def test_each_node_is_sent_its_own_partitions_state_only(make_config, tmp_path):
    fresh = rounds_then_resume(make_config, tmp_path, rounds=2, lying_rounds={2})
    for message in fresh.sent:
        partition = fresh.partition(message)
        seen = " ".join(repr(dict(record)) for record in message.content.config_records.values())
        for other, (sigma, _, _) in ROUND.items():
            if other != partition:
                assert repr(sigma) not in seen, (partition, other, seen)


def test_a_partition_two_nodes_claimed_is_not_resumed(make_config, tmp_path):
    """The liar claims the victim's partition from its first reply on: the server
    cannot tell which node is honest, so it keeps the first claimant's history and
    refuses to hand it out on resume rather than guess."""
    with pytest.raises(SimulationError, match=r"partitions \[0\] were claimed by two nodes"):
        rounds_then_resume(make_config, tmp_path, rounds=1, lying_rounds={1})
