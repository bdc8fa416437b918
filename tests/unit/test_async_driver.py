"""The asynchronous driver's bookkeeping (bases, staleness, drops, benching, the time
budget) on a scripted grid: each pull answers one node's oldest message, in an order
the test chooses, so every arrival order is exact and repeatable. The simulations in
tests/integration/test_async_simulation.py run the same driver on Flower's engine."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedpriv.crypto.records import Layout
from fedpriv.results import RunDirectory
from fedpriv.runtime.context import RunContext
from fedpriv.strategies.horizontal import Horizontal
from fedpriv.strategies.horizontal.async_family import AsyncHorizontal

pytestmark = pytest.mark.usefixtures("task_identity")

#: What every scripted client adds to the model it was sent.
STEP = 0.01


class ScriptedGrid:
    """Nodes 100, 101, ... hold partitions 0, 1, ...; queries are answered at once, and
    each pull answers the oldest train message of the next partition in ``order``."""

    def __init__(self, partitions: int, order: list[int], bad: frozenset[int] = frozenset()):
        self.partition = {100 + p: p for p in range(partitions)}
        self.order, self.bad = list(order), bad
        self.pending: dict[str, Message] = {}
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.partition)

    def push_messages(self, messages: list[Message]) -> list[str]:
        for message in messages:
            message.metadata.__dict__["_message_id"] = f"m{len(self.sent)}"
            self.pending[message.metadata.message_id] = message
            self.sent.append(message)
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids: set[str]) -> list[Message]:
        asked = [self.pending[i] for i in sorted(message_ids, key=lambda i: int(i[1:]))]
        queries = [m for m in asked if m.metadata.message_type.startswith("query")]
        if queries:
            return [self.answer(m) for m in queries]
        if not self.order:
            return []
        mine = [m for m in asked if self.partition[m.metadata.dst_node_id] == self.order[0]]
        if not mine:
            return []
        self.order.pop(0)
        return [self.answer(mine[0])]

    def answer(self, message: Message) -> Message:
        del self.pending[message.metadata.message_id]
        partition = self.partition[message.metadata.dst_node_id]
        metrics = {"partition-id": partition, "steps": 1, "work-seconds": 0.01}
        if message.metadata.message_type.startswith("query"):
            return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=message)
        change = (
            (lambda v: np.full_like(v, np.nan)) if partition in self.bad else (lambda v: v + STEP)
        )
        arrays = ArrayRecord(
            {k: Array(change(v.numpy())) for k, v in message.content["arrays"].items()}
        )
        metrics["num-examples"] = 10
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
        return Message(content, reply_to=message)

    def trains_to(self, partition: int) -> int:
        return sum(
            m.metadata.message_type == "train"
            and self.partition[m.metadata.dst_node_id] == partition
            for m in self.sent
        )


def started(make_config, tmp_path, grid: ScriptedGrid, *overrides: str):
    config = make_config("num_clients=3", "engine.round_timeout_s=2", *overrides)
    driver = Horizontal.create(config)
    assert isinstance(driver, AsyncHorizontal)
    setup = driver.prepare()
    ctx = RunContext(config, RunDirectory(tmp_path / "run"), setup.evaluate, setup.initial_arrays)
    driver.start(grid, ctx)
    ctx.start_clock()
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
    ctx.start_round(2)
    grid.order = [2]
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
