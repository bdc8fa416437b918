"""Which clients train: a seeded sample, over the nodes in partition order.

Flower's strategies sample with the process-wide ``random`` (``random.sample`` in their
strategy utilities), which Flower's own heartbeat and retry threads draw from too, so
no seed can repeat a run's choice. fedpriv samples instead, from a generator seeded by
the run's seed (and the round), over the nodes in partition order: node IDs are random
per run, partitions are not. The Flower strategy is then shown only the sampled nodes
(:class:`SampledGrid`) and trains every one of them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from flwr.serverapp import Grid

from fedpriv.training import seed_for

#: Mixed into the run's seed for the server's client sampling.
CLIENT_SAMPLING = 2


def partition_order(nodes: list[int], partition_of: Mapping[int, int] | None) -> list[int]:
    """``nodes`` by the partition each holds (learned at the warm-up); nodes that did
    not say which, last, by ID. Without a map (no warm-up): by node ID."""
    known = partition_of or {}
    unknown = len(known)
    return sorted(nodes, key=lambda node: (known.get(node, unknown), node))


def sampling_rng(seed: int, server_round: int | None = None) -> random.Random:
    """The sampling generator of a run (asynchronous: one for the run) or of a round."""
    parts = (CLIENT_SAMPLING,) if server_round is None else (CLIENT_SAMPLING, server_round)
    return random.Random(seed_for(seed, *parts))


def sample_round(
    grid: Grid,
    count: int,
    seed: int,
    server_round: int,
    partition_of: Mapping[int, int] | None,
) -> list[int]:
    """The ``count`` nodes (all there are, if fewer) that train in ``server_round``, in
    the order they were drawn; the same for the same seed, round and partitions."""
    nodes = partition_order(list(grid.get_node_ids()), partition_of)
    if count >= len(nodes):
        return nodes
    return sampling_rng(seed, server_round).sample(nodes, count)


class SampledGrid:
    """The grid, listing only the sampled nodes (what Flower's ``configure_train``
    samples from); everything else is the grid's own."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self._grid = grid
        self._nodes = list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
