"""Swarm learning in whole runs: every strategy and topology, a relay that sees no
parameters, peers that drop out, and convergence against FedAvg. In-process but for the
late peer, on Ray (late means something only while the others work meanwhile)."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv import RunFailed, load_config, run
from fedpriv.config import from_mapping
from fedpriv.crypto.records import CKKS_STYPE
from fedpriv.data.federated import federate
from fedpriv.runtime.exchange import Exchange
from fedpriv.runtime.models import initial_arrays

pytestmark = pytest.mark.inprocess


@pytest.fixture
def swarm(tmp_path):
    """``swarm("strategy=leader", ...)``: a small in-process swarm config writing into
    tmp_path."""

    def make(*overrides: str, name: str = "run"):
        return load_config(
            ["family=swarm", "model=logreg", "train.lr=0.1", f"output_dir={tmp_path / name}",
             "engine=inprocess", *overrides]
        )  # fmt: skip

    return make


@pytest.fixture
def relayed(monkeypatch):
    """Every message content the relay sends or receives."""
    seen = []
    send_and_receive = Exchange.send_and_receive

    def spy(self, grid, outgoing, timeout=None):
        outgoing = list(outgoing)
        replies = send_and_receive(self, grid, outgoing, timeout)
        seen.extend((m.metadata.message_type, m.content) for m in outgoing)
        seen.extend((r.metadata.message_type, r.content) for r in replies if r.has_content())
        return replies

    monkeypatch.setattr(Exchange, "send_and_receive", spy)
    return seen


def test_leader_matches_fedavg_and_gossip_on_a_ring_catches_up(swarm, tmp_path, relayed):
    common = ["num_clients=10", "model=logreg", "train.lr=0.1", "engine=inprocess"]
    fedavg = run(load_config([*common, "rounds=5", f"output_dir={tmp_path / 'fedavg'}"]))
    leader = run(swarm(*common, "strategy=leader", "swarm.topology=full", "rounds=5",
                       name="leader"))  # fmt: skip
    relayed.clear()
    gossip = run(swarm(*common, "strategy=gossip", "swarm.topology=ring", "rounds=10",
                       name="gossip"))  # fmt: skip
    target = fedavg.history[-1]["accuracy"]
    assert abs(leader.history[-1]["accuracy"] - target) <= 0.01
    assert max(r["accuracy"] for r in gossip.history) >= target - 0.03
    for record in gossip.history:
        swarm_record = record["swarm"]
        assert swarm_record["consensus_distance"] > 0 and len(swarm_record["live"]) == 10
        assert (
            swarm_record["accuracy_min"]
            <= swarm_record["accuracy_mean"]
            <= swarm_record["accuracy_max"]
        )
        assert all(c["bytes_up"] > 0 for c in record["clients"])
    assert gossip.summary["family"] == "swarm"

    # The relay saw no parameter in the clear: peer payloads are sealed bytes, the
    # consensus sum is CKKS ciphertext, and no window of the initial model appears.
    config = swarm(*common)
    data = federate(config.data, config.partition, 10, config.seed)
    initial = b"".join(
        a.numpy().astype(np.float32).tobytes() for a in initial_arrays(config, data).values()
    )
    windows = [initial[i : i + 32] for i in range(0, len(initial) - 32, 256)]
    arrays = 0
    for _, content in relayed:
        for record in content.array_records.values():
            for array in record.values():
                arrays += 1
                assert array.stype == CKKS_STYPE or array.dtype in ("uint8", "int64")
                assert not any(window in array.data for window in windows)
        for record in content.metric_records.values():
            assert all(isinstance(v, int | float) for v in record.values())
    assert arrays >= 10 * 2 * 10  # two sealed models per peer per sync, and more


def test_dinno_on_a_random_regular_graph_with_dp_sgd(swarm):
    config = swarm("num_clients=4", "strategy=dinno", "swarm.topology=random_regular",
                   "swarm.degree=2", "strategy.primal_growth=1", "privacy=dp_sgd",
                   "privacy.target_epsilon=8", "rounds=2")  # fmt: skip
    result = run(config)
    assert result.history[-1]["swarm"]["accuracy_mean"] > 0.15  # ten classes
    steps = [[c["steps"] for c in r["clients"]] for r in result.history]
    assert min(steps[1]) > max(steps[0])  # more primal epochs in sync 2
    # σ was calibrated over the growing schedule: the target holds after the last sync.
    assert 0 < result.summary["privacy"]["epsilon_max"] <= 8.0 + 1e-6


def faulty(config, family):
    mapping = config.to_dict()
    mapping["family"] = {"name": family}
    return from_mapping(mapping)


@pytest.mark.simulation
def test_a_late_peer_is_left_out_and_catches_up_from_the_last_merge(swarm, register_spec, relayed):
    late = register_spec("late_swarm")
    config = swarm("engine=simulation", "num_clients=5", "strategy=leader",
                   "swarm.topology=small_world", "swarm.degree=2", "swarm.min_peers=4",
                   "rounds=4")  # fmt: skip
    result = run(faulty(config, late))
    assert len(result.history) == 4 and result.summary["stop_reason"] is None
    assert 3 not in result.history[1]["swarm"]["live"]
    leader_of_sync_2 = result.history[1]["swarm"]["leader"]
    delivered = [
        name
        for kind, content in relayed
        if kind == "train.swarm" and "inbox" in content.array_records
        for name in content.array_records["inbox"]
    ]
    assert f"from-{leader_of_sync_2}-merged000002" in delivered


def test_a_swarm_below_min_peers_stops_cleanly_with_the_reason(swarm, register_spec):
    crashing = register_spec("crashing_swarm")
    config = swarm("num_clients=4", "strategy=gossip", "swarm.topology=full", "rounds=3",
                   "swarm.consensus=false")  # fmt: skip
    with pytest.raises(RunFailed) as failed:
        run(faulty(config, crashing))
    result = failed.value.result
    assert len(result.history) == 2 and result.summary["status"] == "failed"
    assert result.summary["stop_reason"] == "sync 2: 3 peers answered, swarm.min_peers=4"
