"""Client sampling: the same seed, round and partitions pick the same clients, whatever
the node IDs and whatever else draws from Python's global ``random``; and the Flower
strategy trains exactly the clients fedpriv sampled."""

from __future__ import annotations

import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from fedpriv.strategies.horizontal.sampling import SampledGrid, partition_order, sample_round
from fedpriv.strategies.horizontal.specs import HORIZONTAL_STRATEGIES


class Nodes:
    """The grid calls sampling and FedAvg's ``configure_train`` make; nothing is sent."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def get_node_ids(self) -> list[int]:
        return list(self.ids)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)


def partitions_chosen(node_ids: list[int], server_round: int, seed: int = 7) -> list[int]:
    """The partitions sampled when node ``node_ids[k]`` holds partition k."""
    partition_of = {node: k for k, node in enumerate(node_ids)}
    chosen = sample_round(Nodes(node_ids), 3, seed, server_round, partition_of)
    return [partition_of[node] for node in chosen]


def test_the_same_seed_and_round_pick_the_same_partitions_whatever_the_node_ids():
    first = partitions_chosen([501, 17, 9000, 42, 3, 77, 1234, 8, 66, 300], server_round=2)
    random.seed(12345)  # Flower's threads draw from the global generator too
    again = partitions_chosen([11, 12, 13, 14, 15, 16, 17, 18, 19, 20], server_round=2)
    assert first == again
    assert len(set(first)) == 3
    rounds = {tuple(partitions_chosen(list(range(10)), server_round=r)) for r in range(1, 9)}
    assert len(rounds) > 1  # each round draws anew
    seeds = {tuple(partitions_chosen(list(range(10)), 2, seed=s)) for s in range(8)}
    assert len(seeds) > 1


def test_every_node_trains_when_the_sample_is_the_whole_fleet():
    assert sample_round(Nodes([5, 3, 9]), 3, 0, 1, None) == [3, 5, 9]
    assert sample_round(Nodes([5, 3]), 3, 0, 1, None) == [3, 5]  # fewer nodes than asked


def test_nodes_that_did_not_name_a_partition_come_last():
    assert partition_order([10, 20, 30, 40], {30: 0, 10: 1}) == [30, 10, 20, 40]


@pytest.mark.usefixtures("task_identity")
def test_the_flower_strategy_trains_exactly_the_sampled_nodes():
    spec = HORIZONTAL_STRATEGIES.create({"name": "fedavg", "fraction_train": 0.3})
    grid = Nodes(list(range(100, 110)))
    chosen = sample_round(grid, spec.sampled(10), 1, 1, None)
    arrays = ArrayRecord({"w": Array(np.zeros(2))})
    sent = spec.build().configure_train(1, arrays, ConfigRecord(), SampledGrid(grid, chosen))
    assert sorted(m.metadata.dst_node_id for m in sent) == sorted(chosen)
    assert len(chosen) == 3
