"""Where the engine assigned the partitions, the server learns them without asking the
nodes: the warm-up contacts only the first sampled cohort, and the same seed still
samples the same partitions as when every node was asked. The wrapper around Flower's
node registration is on only inside its block and refuses a changed Flower."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fedpriv import load_config, run
from fedpriv.runtime import engine_partitions as engine
from fedpriv.runtime.exchange import Exchange
from fedpriv.runtime.inprocess import InProcessGrid
from fedpriv.strategies.horizontal import common

SAMPLED = ["engine=inprocess", "data=wine", "model=logreg", "num_clients=12", "rounds=3",
           "train.local_epochs=1", "strategy=fedavg", "strategy.fraction_train=0.25"]  # fmt: skip


def flower_link() -> LinkStateFactory:
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory

    return LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())


def test_the_map_flower_registers_is_what_the_servers_grid_is_told() -> None:
    factory = flower_link()
    with engine.recording_partitions():
        # as start_vce calls it: by its module name
        mapping = vce_api._register_nodes(num_nodes=5, state_factory=factory)
        assert engine.engine_partitions(InMemoryGrid(factory)) == mapping
    assert sorted(mapping.values()) == [0, 1, 2, 3, 4]
    assert engine.engine_partitions(InMemoryGrid(factory)) is None  # outside: not claimed
    assert vce_api._register_nodes.__module__ == vce_api.__name__  # Flower's own again


def test_a_grid_the_engine_did_not_record_is_left_to_the_nodes(monkeypatch) -> None:
    monkeypatch.setattr(engine, "RECORD_WAIT_S", 0.01)
    with engine.recording_partitions():
        assert engine.engine_partitions(InMemoryGrid(flower_link())) is None
    assert engine.engine_partitions(object()) is None  # type: ignore[arg-type]  # a fleet's grid


def test_the_in_process_engine_says_what_each_node_config_names() -> None:
    grid = InProcessGrid(lambda msg, ctx: msg, 3, node_ids=[30, 10, 20])
    assert engine.engine_partitions(grid) == {30: 0, 10: 1, 20: 2}


def test_flowers_node_registration_is_the_version_the_wrapper_was_written_for() -> None:
    engine.check_pinned()


def test_a_change_in_flowers_node_registration_stops_the_wrapper_with_its_name(
    monkeypatch,
) -> None:
    changed = copy.copy(engine.PINNED)
    changed["_register_nodes"] = "0" * 64
    monkeypatch.setattr(engine, "PINNED", changed)
    refused = pytest.raises(RuntimeError, match=r"changed \(vce_api\._register_nodes\)")
    with refused, engine.recording_partitions():
        pass


def contacted(monkeypatch) -> list[list[int]]:
    """Record the nodes each first contact (the warm-up) reaches."""
    seen: list[list[int]] = []
    original = Exchange.first_contact

    def first_contact(self: Exchange, grid: Any, nodes: Any, *args: Any, **kw: Any) -> Any:
        nodes = list(nodes)
        seen.append(nodes)
        return original(self, grid, nodes, *args, **kw)

    monkeypatch.setattr(Exchange, "first_contact", first_contact)
    return seen


def partitions_trained(result: Any) -> list[list[int]]:
    return [sorted(c["partition-id"] for c in r["clients"]) for r in result.history]


@pytest.mark.inprocess
def test_the_warm_up_contacts_only_the_first_cohort_and_samples_as_before(
    tmp_path, monkeypatch
) -> None:
    seen = contacted(monkeypatch)
    cohort = run(load_config([*SAMPLED, f"output_dir={tmp_path / 'cohort'}"]))
    assert [len(nodes) for nodes in seen] == [3]  # 25% of 12, not the population

    seen.clear()
    monkeypatch.setattr(common, "engine_partitions", lambda grid: None)  # as on a fleet
    everyone = run(load_config([*SAMPLED, f"output_dir={tmp_path / 'everyone'}"]))
    assert [len(nodes) for nodes in seen] == [12]

    assert partitions_trained(cohort) == partitions_trained(everyone)
    assert all(len(p) == 3 for p in partitions_trained(cohort))
    assert partitions_trained(cohort)[0] != partitions_trained(cohort)[1]  # drawn per round
    assert [r["accuracy"] for r in cohort.history] == [r["accuracy"] for r in everyone.history]


@pytest.mark.inprocess
def test_the_asynchronous_warm_up_contacts_the_first_dispatch(tmp_path, monkeypatch) -> None:
    seen = contacted(monkeypatch)
    sent: list[int] = []
    original = Exchange.push

    def push(self: Exchange, grid: Any, messages: list[Any]) -> Any:
        sent.extend(m.metadata.dst_node_id for m in messages)
        return original(self, grid, messages)

    monkeypatch.setattr(Exchange, "push", push)
    overrides = [*SAMPLED[:-2], "strategy=fedasync", "strategy.fraction_train=0.25", "rounds=2"]
    run(load_config([*overrides, f"output_dir={tmp_path}"]))
    assert len(seen) == 1 and len(seen[0]) == 3
    assert sorted(sent[:3]) == sorted(seen[0])  # the nodes warmed are the first to train
