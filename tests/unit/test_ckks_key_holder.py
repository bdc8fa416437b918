"""Under CKKS the server cannot read the model, so it asks one key holder to evaluate it.
Which one matters: a node the SuperLink still lists after it died, or one whose update
was refused for a stale key, cannot answer, and the round's accuracy is lost."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from flwr.app import Message

from fedpriv import load_config
from fedpriv.families import FAMILIES

pytestmark = pytest.mark.usefixtures("task_identity")


class Grid:
    """The nodes the SuperLink lists (the dead and the stale among them)."""

    def get_node_ids(self) -> list[int]:
        return [11, 5, 9]


def asked(live: set[int]) -> int:
    """The node the driver sends the encrypted model to, given the round's accepted."""
    strategy = FAMILIES.get("horizontal").create(load_config(["crypto=ckks", "num_clients=3"]))
    sent: list[Message] = []
    exchange = SimpleNamespace(send_and_receive=lambda grid, messages: sent.extend(messages) or [])
    strategy.evaluate(Grid(), SimpleNamespace(exchange=exchange), live=live)
    (message,) = sent
    return message.metadata.dst_node_id


def test_the_key_holder_is_a_node_whose_update_the_round_accepted():
    assert asked({9, 11}) == 9  # node 5, listed but not accepted this round, is passed over
    assert asked({11}) == 11
    assert asked(set()) == 5  # nothing accepted: the lowest listed node, as before
    assert asked({42}) == 5  # an accepted node no longer listed is not asked
