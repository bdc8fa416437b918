"""The link-state index by destination: Flower's own in-memory link state, with and
without the patch, fed the same messages, hands every node exactly the same messages
in the same order; the patch is off outside its block; and it refuses to run on a
Flower whose code it was not written for."""

from __future__ import annotations

import copy
import inspect
import time

import pytest
from flwr.app import Message, RecordDict
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpriv.runtime import linkstate_index
from fedpriv.runtime.inprocess import new_run
from fedpriv.runtime.linkstate_index import MessagesByNode, indexed_linkstate

NODES = 4
RUNS = 2


class Link:
    """One of Flower's in-memory link states with ``NODES`` nodes and ``RUNS`` runs,
    set up as Flower's simulation sets up its own."""

    def __init__(self) -> None:
        factory = LinkStateFactory(
            FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
        )
        self.state: InMemoryLinkState = factory.state()  # type: ignore[assignment]
        self.nodes = list(_register_nodes(NODES, factory))
        self.runs = []
        for _ in range(RUNS):
            run = new_run()
            self.state.run_ids[run.run_id] = RunRecord(run=run)
            task = run.primary_task_id
            self.state.task_store[task] = Task(task_id=task, run_id=run.run_id)  # type: ignore[index]
            self.runs.append(run.run_id)


def message(node: int, run: int, label: str) -> Message:
    TaskIdentity.run_id = run
    msg = Message(RecordDict(), dst_node_id=node, message_type="train")
    msg.metadata.__dict__["_message_id"] = label
    return msg


def expire(msg: Message) -> None:
    """As if ``msg`` had been sent long ago with a short time-to-live."""
    msg.metadata.created_at = time.time() - 100
    msg.metadata.ttl = 10


# One step: ("push", node, run, _) | ("get", node, limit, run filter) | ("delete", k, _, _)
# | ("expire", k, _, _): the k-th message pushed so far (modulo their number)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, NODES - 1), st.integers(0, RUNS - 1), st.just(0)),
        st.tuples(
            st.just("get"),
            st.integers(0, NODES - 1),
            st.sampled_from([None, 1, 2, 3]),
            st.sampled_from([None, 0, 1]),
        ),
        st.tuples(
            st.sampled_from(["delete", "expire"]), st.integers(0, 40), st.just(0), st.just(0)
        ),
    ),
    max_size=60,
)


@pytest.mark.usefixtures("task_identity")
@settings(max_examples=80, deadline=None)
@given(steps)
def test_the_indexed_state_hands_each_node_what_flowers_own_would(ops) -> None:
    plain = Link()
    with indexed_linkstate():
        indexed = Link()
    assert isinstance(indexed.state.message_ins_store, MessagesByNode)
    assert not isinstance(plain.state.message_ins_store, MessagesByNode)
    pushed: list[tuple[Message, Message]] = []  # each message as each state holds it
    for step, (kind, a, b, c) in enumerate(ops):
        if kind == "push":
            msg = message(plain.nodes[a], plain.runs[b], f"m{step}")
            twin = message(indexed.nodes[a], indexed.runs[b], f"m{step}")
            twin.metadata.created_at = msg.metadata.created_at
            assert plain.state.store_message_ins(msg) == indexed.state.store_message_ins(twin)
            pushed.append((msg, twin))
        elif kind == "get":
            got = []
            for link in (plain, indexed):
                run = None if c is None else link.runs[c]
                with indexed_linkstate():  # on for both: the plain state falls back
                    replies = link.state.get_message_ins(link.nodes[a], b, run_id=run)
                assert all(m.metadata.delivered_at != "" for m in replies)
                got.append([m.metadata.message_id for m in replies])
            assert got[0] == got[1]
        elif pushed and kind == "expire":
            for msg in pushed[a % len(pushed)]:
                expire(msg)
        elif pushed:
            doomed = {pushed[a % len(pushed)][0].metadata.message_id}
            plain.state.delete_messages(doomed)
            indexed.state.delete_messages(doomed)
    # Every message still waiting for a node is indexed under that node, and only those.
    store = indexed.state.message_ins_store
    assert isinstance(store, MessagesByNode)
    for node in indexed.nodes:
        assert store.ids_for(node) == [
            i for i, m in store.items() if m.metadata.dst_node_id == node
        ]


def test_the_store_keeps_its_index_through_every_way_a_dict_changes(task_identity) -> None:
    a, b, c = (message(n, 1, f"m{n}") for n in (7, 8, 7))
    c.metadata.__dict__["_message_id"] = "c"
    store = MessagesByNode({"a": a})
    store["b"], store["c"] = b, c
    assert store.ids_for(7) == ["a", "c"] and store.ids_for(8) == ["b"]
    del store["a"]
    assert store.pop("b") is b and store.pop("b", None) is None
    assert store.ids_for(7) == ["c"] and store.ids_for(8) == []
    store.update({"a": a})
    store.setdefault("b", b)
    assert store.ids_for(7) == ["c", "a"] and store.ids_for(8) == ["b"]
    key, _ = store.popitem()
    assert key == "b" and store.ids_for(8) == []
    store.clear()
    assert store.ids_for(7) == [] and not store.by_node


def test_the_patch_is_on_only_inside_its_block() -> None:
    original_init, original_get = InMemoryLinkState.__init__, InMemoryLinkState.get_message_ins
    with indexed_linkstate():
        assert InMemoryLinkState.get_message_ins is linkstate_index.get_message_ins
        with indexed_linkstate():  # nested: still on, restored once
            pass
        assert InMemoryLinkState.get_message_ins is linkstate_index.get_message_ins
    assert InMemoryLinkState.__init__ is original_init
    assert InMemoryLinkState.get_message_ins is original_get
    with pytest.raises(KeyError), indexed_linkstate():
        raise KeyError("a failed run")
    assert InMemoryLinkState.get_message_ins is original_get


def test_flowers_code_is_the_version_the_patch_was_written_for() -> None:
    linkstate_index.check_pinned()  # fails here first when flwr is upgraded


def test_a_change_in_flowers_code_stops_the_patch_with_its_name(monkeypatch) -> None:
    changed = copy.copy(linkstate_index.PINNED)
    changed["get_message_ins"] = "0" * 64  # as if Flower's method had changed
    monkeypatch.setattr(linkstate_index, "PINNED", changed)
    refused = pytest.raises(RuntimeError, match=r"InMemoryLinkState changed \(get_message_ins\)")
    with refused, indexed_linkstate():
        pass
    assert InMemoryLinkState.get_message_ins is not linkstate_index.get_message_ins


def test_a_second_assignment_of_the_store_in_flowers_module_is_a_change(monkeypatch) -> None:
    module = linkstate_index._linkstate_module()
    getsource = inspect.getsource
    extra = getsource(module) + "\n        self.message_ins_store = {}\n"
    monkeypatch.setattr(
        inspect, "getsource", lambda obj: extra if obj is module else getsource(obj)
    )
    with pytest.raises(RuntimeError, match="message_ins_store assigned outside __init__"):
        linkstate_index.check_pinned()
