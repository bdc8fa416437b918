"""Swarm pieces without Flower: sealing, graphs, weights, elections, merges, secure sum."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from fedpriv import ConfigError, load_config
from fedpriv.config import from_mapping, run_config
from fedpriv.crypto import ckks, peers
from fedpriv.crypto.embeddings import CkksEmbeddingSum
from fedpriv.crypto.records import to_record
from fedpriv.strategies.swarm.family import CONSENSUS_PARAMS
from fedpriv.strategies.swarm.settings import DiNNO, Gossip, Leader, elect
from fedpriv.strategies.swarm.topology import connected, graph, metropolis_weights, size_weights

# -- sealing between peers -------------------------------------------------------------------


def test_sealed_payloads_open_only_for_their_recipient_sender_and_label():
    alice, bob, eve = (peers.new_private_key() for _ in range(3))
    pub = {name: peers.public_key(key) for name, key in (("a", alice), ("b", bob), ("e", eve))}
    payload = np.arange(100, dtype=np.float32).tobytes()
    sealed = peers.seal(payload, alice, pub["b"], 0, 1, "r3")
    assert payload not in sealed and len(sealed) == len(payload) + peers.OVERHEAD
    assert peers.open_sealed(sealed, bob, pub["a"], 0, 1, "r3") == payload
    with pytest.raises(ValueError, match="does not authenticate"):
        peers.open_sealed(sealed, eve, pub["a"], 0, 1, "r3")  # a third peer
    with pytest.raises(ValueError, match="does not authenticate"):
        peers.open_sealed(sealed, bob, pub["a"], 0, 1, "r4")  # replayed in another round
    with pytest.raises(ValueError, match="does not authenticate"):
        peers.open_sealed(sealed, bob, pub["a"], 0, 2, "r3")  # redirected
    tampered = bytearray(sealed)
    tampered[40] ^= 1
    with pytest.raises(ValueError, match="does not authenticate"):
        peers.open_sealed(bytes(tampered), bob, pub["a"], 0, 1, "r3")


# -- graphs and weights ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,degree,expected",
    [("full", 0, [9] * 10), ("ring", 0, [2] * 10), ("random_regular", 3, [3] * 10)],
)
def test_graphs_have_the_promised_degrees_and_are_connected(name, degree, expected):
    neighbours = graph(name, 10, degree, 0.0, seed=1)
    assert [len(n) for n in neighbours] == expected and connected(neighbours)
    assert all(i in neighbours[j] for i in range(10) for j in neighbours[i])  # undirected


def test_small_world_rewires_a_ring_lattice_and_stays_connected():
    lattice = graph("small_world", 12, 4, 0.0, seed=0)
    assert [len(n) for n in lattice] == [4] * 12
    rewired = graph("small_world", 12, 4, 0.5, seed=0)
    assert connected(rewired) and rewired != lattice


def test_disconnected_or_impossible_graphs_are_refused():
    with pytest.raises(ConfigError, match="no connected graph"):
        graph("random_regular", 8, 1, 0.0, seed=0)  # a perfect matching
    with pytest.raises(ConfigError, match="peers × degree even"):
        graph("random_regular", 5, 3, 0.0, seed=0)


def test_metropolis_weights_are_symmetric_and_doubly_stochastic():
    neighbours = graph("random_regular", 8, 3, 0.0, seed=2)
    neighbours[0].add(5)
    neighbours[5].add(0)  # uneven degrees
    w = metropolis_weights(neighbours)
    matrix = np.array([[w[i].get(j, 0.0) for j in range(8)] for i in range(8)])
    np.testing.assert_allclose(matrix, matrix.T)
    np.testing.assert_allclose(matrix.sum(0), 1)
    np.testing.assert_allclose(matrix.sum(1), 1)
    assert (matrix >= 0).all()
    sized = size_weights(graph("ring", 4, 0, 0, 0), [10, 20, 30, 40])
    assert sized[0] == pytest.approx({0: 10 / 70, 1: 20 / 70, 3: 40 / 70})


def test_leader_election_rotates_or_is_seeded_and_always_a_live_peer():
    assert [elect([4, 1, 7], sync, "rotating", 0) for sync in (1, 2, 3, 4)] == [1, 4, 7, 1]
    picks = [elect([0, 2, 5, 6], sync, "random", 3) for sync in range(1, 30)]
    assert set(picks) <= {0, 2, 5, 6} and len(set(picks)) > 1
    assert picks == [elect([6, 5, 2, 0], sync, "random", 3) for sync in range(1, 30)]


# -- merges ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["mean", "weighted_mean", "coordinate_median", "trimmed_mean"])
def test_leader_merges_match_numpy(rule):
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=50) for _ in range(10)]
    vectors[3] = vectors[3] + 100  # an outlier
    sizes = [int(n) for n in rng.integers(5, 50, size=10)]
    leader = Leader(merge=rule, trim=0.2)
    stacked = np.stack(vectors)
    expected = {
        "mean": stacked.mean(0),
        "weighted_mean": np.average(stacked, axis=0, weights=sizes),
        "coordinate_median": np.median(stacked, axis=0),
        "trimmed_mean": np.sort(stacked, axis=0)[2:-2].mean(0),
    }[rule]
    np.testing.assert_allclose(leader.merge_rule().numpy(stacked, sizes), expected, rtol=1e-6)


def test_dinno_primal_schedule_grows_to_its_cap_and_dp_sgd_plans_for_it():
    config = load_config(["family=swarm", "strategy=dinno", "strategy.primal_max=3", "rounds=7"])
    dinno = config.strategy
    assert [dinno.local_epochs(config, sync) for sync in range(1, 8)] == [1, 1, 2, 2, 3, 3, 3]
    assert dinno.planned_epochs(config) == 15
    gossip = load_config(["family=swarm", "rounds=7", "train.local_epochs=2"])
    assert gossip.strategy.planned_epochs(gossip) == 14


def test_gossip_mixes_with_the_relayed_weights_and_refuses_bad_ones():
    own, theirs = np.zeros(3), {1: np.ones(3), 2: np.full(3, 4.0)}
    mixed = Gossip().combine(0, own, theirs, {0: 0.5, 1: 0.25, 2: 0.25})
    np.testing.assert_allclose(mixed, [1.25, 1.25, 1.25])
    assert Gossip().combine(0, own, {}, {}) is own
    with pytest.raises(ValueError, match="do not cover self and senders"):
        Gossip().combine(0, own, theirs, {0: 0.5, 1: 0.5})
    with pytest.raises(ValueError, match="or sum to 1"):
        Gossip().combine(0, own, theirs, {0: 0.5, 1: 0.5, 2: 0.5})


def test_a_leader_peer_adopts_the_one_merge_and_only_a_newer_one():
    own, merge = np.zeros(3), np.ones(3)
    leader = Leader()
    assert leader.combine(0, own, {2: merge}, {}) is merge
    assert leader.combine(0, own, {}, {}) is own
    with pytest.raises(ValueError, match="one merged model, got 2"):
        leader.combine(0, own, {1: merge, 2: merge}, {})
    assert leader.accepts("merged000004", 5, last_merge=3)
    assert not leader.accepts("merged000003", 5, last_merge=3)  # adopted already
    assert not leader.accepts("merged000005", 5, last_merge=3)  # not from a past sync
    assert not leader.accepts("r4", 5, last_merge=3)
    assert [Gossip().accepts(label, 5, 0) for label in ("r4", "r3", "merged000004")] == [
        True,
        False,
        False,
    ]
    assert DiNNO().combine(0, own, {1: merge}, {}) is own  # the primal step pulls instead
    assert Gossip().leader([0, 1, 2], 1, 0) is None and Leader().leader([4, 2], 1, 0) == 2


def test_secure_sum_of_models_matches_numpy_and_the_relay_holds_no_key():
    keys = ckks.make_keys(CONSENSUS_PARAMS)
    rng = np.random.default_rng(1)
    models = [rng.normal(size=5000) for _ in range(4)]
    adder = CkksEmbeddingSum(CONSENSUS_PARAMS, keys.public, width=5000)
    sizes = [2048, 2048, 904]
    records = {
        p: to_record(ckks.encrypt(keys.secret, CONSENSUS_PARAMS, m), sizes)
        for p, m in enumerate(models)
    }
    assert all(adder.check(r, 1) is None for r in records.values())
    total, bad = adder.combine(records, 1)
    assert not bad and total is not None
    chunks = [a.data for _, a in sorted(total.items())]
    summed = ckks.decrypt(keys.secret, CONSENSUS_PARAMS, chunks)
    np.testing.assert_allclose(summed, np.sum(models, axis=0), atol=1e-6)
    mean = summed / 4
    gaps = [np.linalg.norm(m - mean) for m in models]
    expected = [np.linalg.norm(m - np.mean(models, axis=0)) for m in models]
    np.testing.assert_allclose(gaps, expected, rtol=1e-8)


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["crypto=ckks"], "not available with family=swarm"),
        (["privacy=central"], "central DP needs a server"),
        (["swarm.min_peers=11"], "exceeds num_clients=10"),
        (
            ["strategy=fedavg"],
            "unknown swarm strategy strategy.name='fedavg'; choose one of: dinno, gossip, leader",
        ),
        (
            ["strategy=leader", "strategy.merge=median"],
            "strategy.merge='median' must be one "
            "of: mean, weighted_mean, coordinate_median, trimmed_mean",
        ),
        (
            ["strategy=leader", "strategy.election=vote"],
            "strategy.election='vote' must be one of: rotating, random",
        ),
        (["strategy=leader", "strategy.trim=0.5"], r"strategy.trim=0.5 must be in \[0, 0.5\)"),
        (
            ["strategy.mixing=uniform"],
            "strategy.mixing='uniform' must be one of: metropolis, data_size",
        ),
        (["strategy=dinno", "strategy.rho=0"], "strategy.rho=0.0 must be > 0"),
        (["strategy=dinno", "strategy.primal_max=0"], "must be >= 1 and <= strategy.primal_max"),
        (["swarm.topology=star"], "swarm.topology='star' must be one of: full, ring"),
        (["swarm.topology=random_regular", "swarm.degree=1"], "no connected graph"),
        (["num_clients=1"], "at least 2 peers"),
    ],
)
def test_swarm_misconfigurations_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(["family=swarm", *overrides])


def test_swarm_settings_follow_the_family_and_each_strategy_has_its_own():
    config = load_config(["family=swarm", "strategy=leader", "strategy.merge=coordinate_median",
                          "num_clients=6"])  # fmt: skip
    assert config.strategy == Leader(merge="coordinate_median")
    assert config.family_settings.topology == "ring" and config.num_clients == 6
    assert config.to_dict()["strategy"] == {
        "name": "leader", "merge": "coordinate_median", "trim": 0.1, "election": "rotating"
    }  # fmt: skip
    assert "mode" not in config.to_dict()["swarm"] and "swarm" not in load_config([]).to_dict()
    assert load_config(["family=swarm"]).strategy == Gossip()
    assert from_mapping(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"strategy\.rho is not a parameter of swarm strategy "
                       r"'leader'; its parameters are: election, merge, trim"):  # fmt: skip
        load_config(["family=swarm", "strategy=leader", "+strategy.rho=1"])


def test_an_older_run_with_swarm_mode_says_what_to_write_now(tmp_path):
    mapping = load_config(["family=swarm"]).to_dict()
    mapping["strategy"] = {"name": "swarm"}
    mapping["swarm"].update(mode="leader", merge="coordinate_median", trim=0.1,
                            election="rotating", mixing="metropolis", rho=0.1)  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(mapping))
    with pytest.raises(ConfigError) as error:
        run_config(tmp_path)
    assert error.value.problems == [
        "strategy=swarm and swarm.mode are gone (swarm modes are strategies now): write "
        "strategy=leader strategy.election=rotating strategy.merge=coordinate_median "
        "strategy.trim=0.1, and drop swarm.mixing, swarm.rho (parameters of the "
        "other strategies)"
    ]
    mapping["swarm"] = {"mode": "gossip", "topology": "full"}
    with pytest.raises(ConfigError, match=r"write strategy=gossip$"):
        from_mapping(mapping)
    mapping["swarm"] = {"mode": "fedavg"}
    with pytest.raises(ConfigError, match=r"swarm\.mode=fedavg is gone: .* one of: dinno, gossip"):
        from_mapping(mapping)


def test_redraw_gives_each_sync_its_own_graph_and_fixed_keeps_one():
    from fedpriv.strategies.swarm import SwarmFamily

    fixed = SwarmFamily(load_config(["family=swarm", "swarm.topology=random_regular"]))
    assert fixed.graph(1) == fixed.graph(2)
    redrawn = SwarmFamily(
        load_config(["family=swarm", "swarm.topology=random_regular", "swarm.redraw=true"])
    )
    graphs = [redrawn.graph(sync) for sync in (1, 2, 3)]
    assert graphs[0] != graphs[1] or graphs[1] != graphs[2]
    assert all(connected(g) for g in graphs) and graphs[0] == redrawn.graph(1)
