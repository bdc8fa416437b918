"""The asynchronous driver's bookkeeping (bases, staleness, drops, benching, the time
budget) on the in-process grid with scripted nodes and a scripted delivery order: each
pull answers one node's oldest message, in an order the test chooses, so every arrival
order is exact and repeatable. The simulations in
tests/integration/test_async_simulation.py run the same driver on Flower's engine."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedpriv.crypto.records import Layout
from fedpriv.results import RunDirectory
from fedpriv.runtime.context import RunContext
from fedpriv.runtime.inprocess import InProcessGrid
from fedpriv.strategies.horizontal import Horizontal
from fedpriv.strategies.horizontal.async_family import AsyncHorizontal

pytestmark = pytest.mark.usefixtures("task_identity")

#: What every scripted client adds to the model it was sent.
STEP = 0.01
#: The node holding partition 0; partition p is on node FIRST_NODE + p.
FIRST_NODE = 100


class Arrivals:
    """The delivery order of a scripted grid: queries are answered at once, and each
    pull answers the oldest train message of the next partition in ``order``."""

    def __init__(self, order: list[int]) -> None:
        self.order = order

    def __call__(self, pending: list[Message]) -> list[Message]:
        queries = [m for m in pending if m.metadata.message_type.startswith("query")]
        if queries or not self.order:
            return queries
        mine = [m for m in pending if m.metadata.dst_node_id - FIRST_NODE == self.order[0]]
        if not mine:
            return []
        self.order.pop(0)
        return mine[:1]


def scripted_client(bad: frozenset[int]) -> Callable[[Message, Context], Message]:
    """A node that adds ``STEP`` to the model it was sent (NaN for ``bad`` partitions)."""

    def answer(message: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        metrics = {"partition-id": partition, "steps": 1, "work-seconds": 0.01}
        if message.metadata.message_type.startswith("query"):
            return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=message)
        change = (lambda v: np.full_like(v, np.nan)) if partition in bad else (lambda v: v + STEP)
        arrays = ArrayRecord(
            {k: Array(change(v.numpy())) for k, v in message.content["arrays"].items()}
        )
        metrics["num-examples"] = 10
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
        return Message(content, reply_to=message)

    return answer


class ScriptedGrid(InProcessGrid):
    """Nodes 100, 101, ... hold partitions 0, 1, ... and run :func:`scripted_client`;
    replies arrive in the order :class:`Arrivals` scripts. Keeps what was sent."""

    def __init__(self, partitions: int, order: list[int], bad: frozenset[int] = frozenset()):
        self.arrivals = Arrivals(order)
        nodes = [FIRST_NODE + p for p in range(partitions)]
        super().__init__(scripted_client(bad), partitions, node_ids=nodes, order=self.arrivals)
        self.sent: list[Message] = []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.sent += messages
        return super().push_messages(messages)

    def trains_to(self, partition: int) -> int:
        return sum(
            m.metadata.message_type == "train" and m.metadata.dst_node_id == FIRST_NODE + partition
            for m in self.sent
        )


def started(make_config, tmp_path, grid: ScriptedGrid, *overrides: str):
    config = make_config("num_clients=3", "engine.round_timeout_s=2", *overrides)
    driver = Horizontal.create(config)
    assert isinstance(driver, AsyncHorizontal)
    driver.prepare()
    ctx = RunContext(config, RunDirectory(tmp_path / "run"))
    driver.start(grid, ctx)
    ctx.clock.start()
    return driver, ctx


def test_fedasync_measures_each_update_from_the_model_its_client_was_sent(
    make_config, tmp_path
) -> None:
    grid = ScriptedGrid(3, order=[0, 1, 0, 1, 2])
    driver, ctx = started(
        make_config, tmp_path, grid, "strategy=fedasync", "strategy.alpha=0.5",
        "strategy.staleness=polynomial", "strategy.staleness_a=1.0",
        "strategy.updates_per_round=5",
    )  # fmt: skip
    layout = Layout.of(driver.arrays)
    expected = layout.flatten(driver.arrays)
    report = driver.round(1, grid, ctx)
    entries = report.clients
    assert [e["partition-id"] for e in entries] == [0, 1, 0, 1, 2]
    # Partition 2 was sent version 0 and answered after four versions were applied.
    assert [e["staleness"] for e in entries] == [0, 1, 1, 1, 4]
    # The same recursion, from the models the grid actually delivered.
    trains = [m for m in grid.sent if m.metadata.message_type == "train"]
    answered = [0, 1, 3, 4, 2]  # which train message each arrival answered
    for entry, index in zip(entries, answered, strict=True):
        local = layout.flatten(trains[index].content["arrays"]) + STEP
        mix = 0.5 / (entry["staleness"] + 1)
        expected = (1 - mix) * expected + mix * local
    np.testing.assert_allclose(layout.flatten(driver.arrays), expected, rtol=1e-6)
    assert report.extra["version"] == report.extra["updates"] == 5


def test_updates_over_max_staleness_are_dropped_and_counted(make_config, tmp_path) -> None:
    grid = ScriptedGrid(3, order=[0, 1, 0, 1, 2, 0])
    driver, ctx = started(
        make_config, tmp_path, grid, "strategy=fedasync", "strategy.max_staleness=2",
        "strategy.updates_per_round=5",
    )  # fmt: skip
    report = driver.round(1, grid, ctx)
    assert [e["partition-id"] for e in report.clients] == [0, 1, 0, 1, 0]
    assert report.extra["dropped_stale"] == 1  # partition 2's update, 4 versions old
    assert report.extra["version"] == 5


def test_a_client_whose_reply_is_rejected_waits_for_the_next_round(make_config, tmp_path):
    grid = ScriptedGrid(3, order=[2, 0, 1, 0, 1], bad=frozenset({2}))
    driver, ctx = started(
        make_config, tmp_path, grid, "strategy=fedbuff", "strategy.buffer_size=2",
        "strategy.updates_per_round=4",
    )  # fmt: skip
    report = driver.round(1, grid, ctx)
    record = ctx.end_round(report)
    assert [e["partition-id"] for e in report.clients] == [0, 1, 0, 1]
    reasons = [r["reason"] for r in record["rejected"]]
    assert len(reasons) == 1 and reasons[0].endswith("holds NaN or Inf")
    assert grid.trains_to(2) == 1  # not sent new work after its bad reply
    assert report.extra["version"] == 2  # two full buffers of two
    ctx.start_round()
    grid.arrivals.order = [2]
    driver.round(2, grid, ctx)
    assert grid.trains_to(2) == 2  # a new round: it gets work again


def test_the_time_budget_stops_the_run_between_updates(make_config, tmp_path) -> None:
    grid = ScriptedGrid(3, order=[0, 1, 2] * 10)
    driver, ctx = started(
        make_config, tmp_path, grid, "strategy=fedasync", "time_budget_s=0.000001",
        "strategy.updates_per_round=30",
    )  # fmt: skip
    report = driver.round(1, grid, ctx)
    assert report.stop_reason is not None and report.stop_reason.startswith("time_budget_s=1e-06")
    assert len(report.clients) == 1  # stopped after the first pull
