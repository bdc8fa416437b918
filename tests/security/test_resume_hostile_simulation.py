"""A hostile client in a whole run tries to rewrite another client's record.

The same attack as ``test_resume_node_states.py``, in an in-process run with Opacus
training: from round 2 on, partition 2's ClientApp (a mod outside fedpriv's, as a
modified ClientApp would) replaces the node state on its train replies with partition
0's ID, an empty accountant history and a large round count. What the server records
for a resume (``spending.json``) must still be each client's own spending, checked
against the DP steps each client reported in ``metrics.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from flwr.app import ConfigRecord, Context, Message
from hostile_clients import hostile_family

from fedpriv import run
from fedpriv.runtime.checkpoint import NODE_STATE, SPENDING_FILE

pytestmark = pytest.mark.inprocess

VICTIM, HOSTILE = 0, 2


def forge_victims_state(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Partition 2, from round 2: its node state claims partition 0, having spent nothing."""
    reply = call_next(msg, context)
    if (
        int(context.node_config["partition-id"]) == HOSTILE  # type: ignore[call-overload]
        and msg.metadata.message_type == "train"
        and int(msg.content.config_records["config"]["server-round"]) >= 2  # type: ignore[call-overload]
        and reply.has_content()
        and NODE_STATE in reply.content.config_records
    ):
        reply.content[NODE_STATE] = ConfigRecord(
            {
                "partition-id": VICTIM,
                "fedpriv/rounds_trained": 99,
                "fedpriv.dp/noise_multipliers": [],
                "fedpriv.dp/sample_rates": [],
                "fedpriv.dp/steps": [],
            }
        )
    return reply


def test_a_hostile_client_cannot_rewrite_another_clients_record(make_config):
    with hostile_family("hostile_state", forge_victims_state) as family:
        result = run(make_config(family, "num_clients=3", "rounds=3", "privacy=dp_sgd"))
    steps: dict[int, list[int]] = {}
    for record in result.history:
        for client in record["clients"]:
            steps.setdefault(client["partition-id"], []).append(client["dp-steps"])
    assert all(len(s) == 3 for s in steps.values())  # every client trained every round

    recorded = json.loads((result.run_dir / SPENDING_FILE).read_text())["partitions"]
    victim = recorded[str(VICTIM)]["state"]
    assert sum(victim["fedpriv.dp"]["steps"]) == sum(steps[VICTIM])
    assert victim["fedpriv"]["rounds_trained"] == 3
    # The liar's forged states were refused; its round-1 state is what the server kept.
    liar = recorded[str(HOSTILE)]["state"]
    assert sum(liar["fedpriv.dp"]["steps"]) == steps[HOSTILE][0]


FORGED_EPSILON = 1e9


def claim_victims_epsilon(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """From round 2, partition 2's train replies say they are partition 0's, with an
    absurd ε (round 1 is honest: the server binds each node at its first contact)."""
    reply = call_next(msg, context)
    if (
        int(context.node_config["partition-id"]) == HOSTILE  # type: ignore[call-overload]
        and int(msg.content.config_records["config"]["server-round"]) >= 2  # type: ignore[call-overload]
        and reply.has_content()
    ):
        for metrics in reply.content.metric_records.values():
            if "epsilon" in metrics:
                metrics["partition-id"], metrics["epsilon"] = VICTIM, FORGED_EPSILON
    return reply


def test_a_client_can_misreport_only_its_own_epsilon(make_config):
    """Before the fix the ledger took the partition from the reply's metrics: the liar
    wrote partition 0's ε in the summary (whichever reply came last won)."""
    with hostile_family("hostile_metrics", claim_victims_epsilon) as family:
        result = run(make_config(family, "num_clients=3", "rounds=2", "privacy=dp_sgd",
                                 "checkpoint_every=0"))  # fmt: skip
    last = result.history[-1]["clients"]
    (victim,) = [c for c in last if c["partition-id"] == VICTIM and c["epsilon"] < FORGED_EPSILON]
    reported = result.summary["privacy"]["epsilon_per_client"]
    assert reported[str(VICTIM)] == victim["epsilon"] < FORGED_EPSILON
    assert reported[str(HOSTILE)] == FORGED_EPSILON  # it can lie only about itself
