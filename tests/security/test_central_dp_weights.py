"""Under central DP the noise is sized for a uniform mean of the sampled clients, so
each client's weight is the server's to set. A client that declares a huge weight would
make the mean its own update, whose sensitivity the noise does not cover: the reported
ε would be false. The server weighs every accepted reply 1, whatever it sent."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flwr.app import Context, Message
from hostile_clients import hostile_family

from fedpriv import run
from fedpriv.node import partition_id
from fedpriv.privacy.central import UNIFORM_WEIGHT

pytestmark = pytest.mark.inprocess

HOSTILE = 0


def heavy_weight(msg: Message, context: Context, call_next: Callable[..., Message]) -> Message:
    """Outermost mod: partition 0 declares a weight of a million for its update."""
    reply = call_next(msg, context)
    if partition_id(context) == HOSTILE and msg.metadata.message_type == "train":
        reply.content.metric_records["metrics"][UNIFORM_WEIGHT] = 1_000_000
    return reply


@pytest.mark.parametrize("side", ["server", "client"])
def test_a_client_cannot_outweigh_the_others_under_central_dp(make_config, side):
    with hostile_family(f"heavy_{side}", heavy_weight) as family:
        result = run(make_config(family, "privacy=central", f"privacy.side={side}"))
    for record in result.history:
        weights = {c["partition-id"]: c[UNIFORM_WEIGHT] for c in record["clients"]}
        assert HOSTILE in weights
        assert set(weights.values()) == {1}  # the server's weight, not the declared one
