"""Asynchronous strategies on real Flower simulations: no round barrier, so a slow
device delays only its own (stale) updates while the others keep the model moving."""

from __future__ import annotations

import collections

import pytest
from opacus.accountants import PRVAccountant
from test_simulation import check_run_directory

from fedpriv import load_config, run

pytestmark = pytest.mark.simulation

#: Three devices, each on its own actor; the last one 10x slower than the others.
FLEET = [
    "data=digits",
    "model=logreg",
    "num_clients=3",
    "selection.device_profiles=one_slow",
    "selection.speed_spread=10",
    "engine.num_cpus=3",
    "engine.cpus_per_client=1",
    "train.local_epochs=10",
]
SLOW = 2


def updates(history: list[dict]) -> list[dict]:
    return [client for record in history for client in record["clients"]]


@pytest.mark.parametrize(
    ("strategy", "min_staleness"),
    [
        (["strategy=fedasync", "strategy.staleness=polynomial"], 3),
        (["strategy=fedbuff", "strategy.buffer_size=2"], 2),
    ],
    ids=["fedasync", "fedbuff"],
)
def test_asynchronous_servers_keep_updating_while_a_10x_slower_client_trains(
    tmp_path, strategy, min_staleness
) -> None:
    config = load_config(
        [*FLEET, *strategy, "rounds=2", "strategy.updates_per_round=8", f"output_dir={tmp_path}"]
    )
    result = run(config)
    check_run_directory(result, clients=3, rounds=2)
    applied = updates(result.history)
    per_client = collections.Counter(int(u["partition-id"]) for u in applied)
    # While the slow client trained once, the server applied several model versions
    # from the fast ones: its update arrives that many versions stale.
    first_slow = next(u for u in applied if int(u["partition-id"]) == SLOW)
    assert first_slow["staleness"] >= min_staleness, applied
    assert all(per_client[fast] > per_client[SLOW] for fast in (0, 1)), per_client
    versions = [u["version"] for u in applied]
    assert versions == sorted(versions) and result.history[-1]["version"] == versions[-1]
    assert result.final["accuracy"] > 0.8


def test_synchronous_fedavg_waits_for_the_slow_client_every_round(tmp_path) -> None:
    result = run(load_config([*FLEET, "rounds=2", f"output_dir={tmp_path}"]))
    for record in result.history:
        # Every round holds one update per client: the fast ones idle while the slow trains.
        assert sorted(int(c["partition-id"]) for c in record["clients"]) == [0, 1, SLOW]


def test_easgd_with_dp_sgd_accounts_every_local_step(tmp_path) -> None:
    sigma = 1.0
    config = load_config(
        [
            "data=digits", "model=logreg", "num_clients=2", "rounds=4", "strategy=easgd",
            "strategy.rho=0.5", "privacy=dp_sgd", f"privacy.noise_multiplier={sigma}",
            "privacy.target_epsilon=null", "privacy.secure_noise=false", "train.lr=0.2",
            f"output_dir={tmp_path}",
        ]
    )  # fmt: skip
    result = run(config)
    applied = updates(result.history)
    assert len(applied) >= 8 and result.final["accuracy"] > 0.6
    privacy = result.summary["privacy"]
    for partition in (0, 1):
        mine = [u for u in applied if int(u["partition-id"]) == partition]
        last = mine[-1]
        # Every exchange trained; the last reply's ε covers all the steps before it.
        steps = sum(int(u["dp-steps"]) for u in mine)
        accountant = PRVAccountant()
        accountant.history = [(sigma, float(last["dp-sample-rate"]), steps)]
        expected = accountant.get_epsilon(delta=float(last["delta"]))
        assert privacy["epsilon_per_client"][str(partition)] == pytest.approx(expected, rel=1e-6)
        assert int(last["rounds-trained"]) == len(mine)


def test_bmuf_block_momentum_trains_through_blocks(tmp_path) -> None:
    config = load_config(
        [
            "data=digits", "model=logreg", "num_clients=2", "rounds=3", "strategy=bmuf",
            "strategy.block_momentum=0.5", "strategy.nesterov=true", f"output_dir={tmp_path}",
        ]
    )  # fmt: skip
    result = run(config)
    history = result.history
    # Blocks of num_clients arrivals: one model version per two updates.
    assert history[-1]["version"] == history[-1]["updates"] // 2
    assert history[-1]["accuracy"] > history[0]["accuracy"] - 0.02
    assert result.final["accuracy"] > 0.8
