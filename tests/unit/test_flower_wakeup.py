"""Wake-ups in Flower's simulation engine (fedpriv.runtime.flower_wakeup): the Flower
functions it patches are the pinned ones, a changed one stops it before it patches
anything, it restores Flower however the block ends, and Flower's own engine loops
(``vce_api.run_api`` over a real in-memory LinkState and Grid) deliver every message
and every reply with it on. Ray is replaced by a backend that runs the ClientApp in the
worker thread; tests/integration/test_wakeup_simulation.py runs it on Ray."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.proto.task_pb2 import Task
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend.backend import Backend
from flwr.server.superlink.fleet.vce.metrics import VceMetrics
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from fedpriv.runtime import flower_wakeup
from fedpriv.runtime.exchange import push_and_pull
from fedpriv.runtime.flower_wakeup import Doorbell, check_pins, reply_doorbell, wake_on_store
from fedpriv.runtime.inprocess import InProcessGrid, new_run


def flower_functions() -> tuple[object, object, object]:
    return vce_api.add_messages_to_queue, vce_api.put_message_into_state, InMemoryGrid.push_messages


def test_the_pinned_flower_functions_are_the_installed_ones() -> None:
    check_pins()  # fails, naming the function and what to re-check, after a Flower upgrade


def test_a_changed_flower_function_stops_it_before_anything_is_patched(monkeypatch) -> None:
    def add_messages_to_queue(state, queue, nodes_mapping, f_stop):  # a "new Flower"
        """Polls every 10 ms now."""

    monkeypatch.setattr(vce_api, "add_messages_to_queue", add_messages_to_queue)
    before = flower_functions()
    changed = r"vce_api\.add_messages_to_queue.*update PINNED"
    with pytest.raises(RuntimeError, match=changed), wake_on_store():
        pass
    assert flower_functions() == before
    assert flower_wakeup._active is None


def test_a_missing_flower_function_is_named(monkeypatch) -> None:
    monkeypatch.delattr(vce_api, "put_message_into_state")
    missing = r"put_message_into_state \(pinned \w+, found unreadable"
    with pytest.raises(RuntimeError, match=missing):
        check_pins()


def test_it_patches_for_the_block_and_restores_flower_however_the_block_ends() -> None:
    flower = flower_functions()
    grid = InMemoryGrid.__new__(InMemoryGrid)  # reply_doorbell only looks at the type
    with pytest.raises(KeyboardInterrupt), wake_on_store():
        patched = flower_functions()
        bell = reply_doorbell(grid)
        assert all(p is not f for p, f in zip(patched, flower, strict=True))
        assert reply_doorbell(grid) is bell  # the one the engine rings
        with wake_on_store():  # nested: a no-op, the outer block restores
            assert flower_functions() == patched
        assert flower_functions() == patched
        raise KeyboardInterrupt
    assert flower_functions() == flower
    assert reply_doorbell(grid) is not bell


def test_other_grids_get_a_doorbell_nobody_rings() -> None:
    """The deployment Grid (gRPC) and the in-process one keep polling."""
    with wake_on_store():
        bell = reply_doorbell(InProcessGrid(lambda m, c: m, 1))
        assert bell is not reply_doorbell(InProcessGrid(lambda m, c: m, 1))
        assert bell.wait(bell.mark(), 0.0) is False


def test_a_ring_between_mark_and_wait_is_not_slept_through() -> None:
    bell = Doorbell()
    mark = bell.mark()
    bell.ring()
    assert bell.wait(mark, 60.0) is True  # returns at once: the ring came after the mark
    assert bell.wait(bell.mark(), 0.0) is False  # no new ring: the timeout ends it


def test_a_waiter_for_several_rings_wakes_at_the_last() -> None:
    bell = Doorbell()
    mark = bell.mark()
    bell.ring()
    assert bell.wait(mark, 0.0, rings=2) is False  # one of two replies: keep waiting
    bell.ring()
    assert bell.wait(mark, 60.0, rings=2) is True


def test_a_ring_from_another_thread_wakes_the_waiter() -> None:
    bell = Doorbell()
    mark = bell.mark()
    ringer = threading.Timer(0.01, bell.ring)
    ringer.start()
    assert bell.wait(mark, 60.0) is True
    ringer.join()


# -- Flower's engine loops with the patch on ------------------------------------------------
def echo(message: Message, context: Context) -> Message:
    """Replies its partition and what it was sent."""
    metrics = MetricRecord(
        {
            "partition": int(context.node_config["partition-id"]),
            "sent": int(message.content["ask"]["value"]),  # type: ignore[call-overload]
        }
    )
    return Message(RecordDict({"answer": metrics}), reply_to=message)


class ThreadBackend(Backend):
    """Flower's Backend interface, running the app in the engine's worker thread."""

    def build(self, app_fn: Callable[[], Callable[[Message, Context], Message]]) -> None:
        self.app = app_fn()

    @property
    def num_workers(self) -> int:
        return 2

    def is_worker_idle(self) -> bool:
        return True

    def terminate(self) -> None:
        pass

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        return self.app(message, context), context


@pytest.fixture
def engine() -> Iterator[tuple[InMemoryGrid, list[int]]]:
    """Flower's simulation engine loops (``vce_api.run_api``) on a thread, with
    wake-ups on; yields the ServerApp's Grid and the node IDs by partition."""
    with wake_on_store():
        factory = LinkStateFactory(
            FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
        )
        run = new_run()
        state = factory.state()  # registered as Flower's simulation registers its run
        state.run_ids[run.run_id] = RunRecord(run=run)  # type: ignore[attr-defined]
        task = run.primary_task_id
        state.task_store[task] = Task(task_id=task, run_id=run.run_id)  # type: ignore[attr-defined]
        nodes = vce_api._register_nodes(num_nodes=3, state_factory=factory)
        stores = vce_api._register_node_info_stores(nodes, run=run)
        grid = InMemoryGrid(state_factory=factory)
        grid.set_run(run)
        f_stop = threading.Event()
        loops = threading.Thread(
            target=vce_api.run_api,
            args=(lambda: echo, lambda: ThreadBackend({}), nodes, factory, stores, f_stop),
            kwargs={"metrics": VceMetrics()},
        )
        loops.start()
        try:
            yield grid, sorted(nodes, key=nodes.__getitem__)
        finally:
            f_stop.set()
            loops.join()


def test_every_message_reaches_its_node_and_every_reply_the_server(engine) -> None:
    grid, nodes = engine
    bell = reply_doorbell(grid)
    rings = bell.mark()
    # Two messages per node: the engine takes one per node per look, and looks again
    # (at the next ring or Flower's tick).
    asks = [
        Message(RecordDict({"ask": MetricRecord({"value": 10 * k + p})}), node, "query")
        for k in range(2)
        for p, node in enumerate(nodes)
    ]
    sent, replies = push_and_pull(grid, asks, timeout=600)
    assert len(sent) == 6 and {r.metadata.reply_to_message_id for r in replies} == sent
    answers = sorted(
        (int(r.content["answer"]["partition"]), int(r.content["answer"]["sent"])) for r in replies
    )
    assert answers == [(p, 10 * k + p) for p in range(3) for k in range(2)]
    for reply in replies:  # each node answered from its own partition
        assert reply.metadata.src_node_id == nodes[int(reply.content["answer"]["partition"])]
    assert bell.mark() - rings == 6  # one ring per stored reply: the server was woken


def test_rounds_follow_each_other(engine) -> None:
    """Ten exchanges back to back, each answered in full."""
    grid, nodes = engine
    for value in range(10):
        ask = RecordDict({"ask": MetricRecord({"value": value})})
        _, replies = push_and_pull(grid, [Message(ask, n, "query") for n in nodes], timeout=600)
        assert {int(r.content["answer"]["sent"]) for r in replies} == {value}
        assert {r.metadata.src_node_id for r in replies} == set(nodes)
