"""Asynchronous strategies: no round barrier, so a slow device delays only its own
(stale) updates while the others keep the model moving. The slow-device runs need
nodes that work at the same time (Ray); the others run in-process."""

from __future__ import annotations

import collections

import pytest
from opacus.accountants import PRVAccountant

from fedpriv import load_config, resume, run
from fedpriv.runtime.checkpoint import Checkpoint

pytestmark = pytest.mark.inprocess

#: Three devices, each on its own actor; the last one 10x slower than the others.
FLEET = [
    "data=digits",
    "model=logreg",
    "num_clients=3",
    "selection.device_profiles=one_slow",
    "selection.speed_spread=10",
    "engine.num_cpus=3",
    "engine.cpus_per_client=1",
    "train.local_epochs=20",
]
SLOW = 2


def updates(history: list[dict]) -> list[dict]:
    return [client for record in history for client in record["clients"]]


@pytest.mark.parametrize(
    ("strategy", "min_staleness", "updates_per_version"),
    [
        (["strategy=fedasync", "strategy.staleness=polynomial"], 3, 1),
        (["strategy=fedbuff", "strategy.buffer_size=2"], 2, 2),
    ],
    ids=["fedasync", "fedbuff"],
)
@pytest.mark.simulation
def test_asynchronous_servers_keep_updating_while_a_10x_slower_client_trains(
    tmp_path, strategy, min_staleness, updates_per_version, check_run_directory
) -> None:
    # 72 updates: a client 10x slower answers about once per 10 of each fast client's
    # (with no polling floor, message overhead no longer narrows that ratio), so 36 per
    # fast client leave a wide margin for the slow one to arrive (it came 20th-31st).
    config = load_config(
        [*FLEET, *strategy, "rounds=6", "strategy.updates_per_round=12", f"output_dir={tmp_path}"]
    )
    result = run(config)
    check_run_directory(result, clients=3, rounds=6)
    applied = updates(result.history)
    per_client = collections.Counter(int(u["partition-id"]) for u in applied)
    # While the slow client trained once, the server applied several model versions
    # from the fast ones: its update arrives that many versions stale.
    slow = [u for u in applied if int(u["partition-id"]) == SLOW]
    assert slow, f"the slow client's update never arrived: {per_client}"
    assert slow[0]["staleness"] >= min_staleness, applied
    assert all(per_client[fast] > per_client[SLOW] for fast in (0, 1)), per_client
    last = result.history[-1]
    assert last["version"] == last["updates"] // updates_per_version
    assert result.final["accuracy"] > 0.8


@pytest.mark.simulation
def test_synchronous_fedavg_waits_for_the_slow_client_every_round(tmp_path) -> None:
    result = run(load_config([*FLEET, "rounds=2", f"output_dir={tmp_path}"]))
    for record in result.history:
        # Every round holds one update per client: the fast ones idle while the slow trains.
        assert sorted(int(c["partition-id"]) for c in record["clients"]) == [0, 1, SLOW]


def test_bad_replies_are_rejected_and_the_others_keep_updating(tmp_path, register_spec):
    """faulty_family.py: partitions 0-6 each send one kind of bad reply, 7 and 8 are
    honest. Each bad reply is rejected with its reason; a client whose reply failed gets
    no new work until the next round, so the honest two make every update."""
    config = load_config(
        [
            f"family.name={register_spec('faulty_async')}", "engine=inprocess",
            "strategy=fedasync", "data=digits", "model=logreg", "num_clients=9", "rounds=2",
            "strategy.updates_per_round=4", "engine.max_reply_mb=1", f"output_dir={tmp_path}",
        ]
    )  # fmt: skip
    result = run(config)
    applied = updates(result.history)
    assert len(applied) >= 8
    assert {int(u["partition-id"]) for u in applied} == {7, 8}
    rejected = [r for record in result.history for r in record["rejected"]]
    # Each bad client is rejected at most once a round (it waits for the next one).
    assert len({r["node_id"] for r in rejected}) == 7 and len(rejected) <= 14
    assert sum(r["reason"].startswith("client error") for r in rejected) in (1, 2)


def test_easgd_with_dp_sgd_accounts_every_local_step(tmp_path) -> None:
    sigma = 1.0
    config = load_config(
        [
            "engine=inprocess", "data=digits", "model=logreg", "num_clients=2", "rounds=4",
            "strategy=easgd", "strategy.rho=0.5", "privacy=dp_sgd",
            f"privacy.noise_multiplier={sigma}", "privacy.target_epsilon=null",
            "privacy.secure_noise=false", "train.lr=0.2", f"output_dir={tmp_path}",
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
            "engine=inprocess", "data=digits", "model=logreg", "num_clients=2", "rounds=3",
            "strategy=bmuf", "strategy.block_momentum=0.5", "strategy.nesterov=true",
            f"output_dir={tmp_path}",
        ]
    )  # fmt: skip
    result = run(config)
    history = result.history
    # Blocks of num_clients arrivals: one model version per two updates.
    assert history[-1]["version"] == history[-1]["updates"] // 2
    assert history[-1]["accuracy"] > history[0]["accuracy"] - 0.02
    assert result.final["accuracy"] > 0.8


@pytest.mark.processes
def test_a_killed_asynchronous_run_resumes_its_model_version_and_privacy_spent(
    tmp_path, kill_during_run
) -> None:
    killed = tmp_path / "killed"
    kill_after = kill_during_run(
        killed,
        [
            "engine=inprocess", "data=digits", "model=logreg", "num_clients=2", "rounds=4",
            "strategy=fedbuff", "strategy.buffer_size=2", "privacy=dp_sgd",
            "privacy.noise_multiplier=1.0", "privacy.target_epsilon=null",
        ],
    )  # fmt: skip
    checkpoint = Checkpoint.load(killed)
    assert checkpoint is not None and checkpoint.round == kill_after
    result = resume(killed)
    history = result.history
    assert [r["round"] for r in history] == [1, 2, 3, 4]
    applied = updates(history)
    # The update count and the model version go on from the checkpoint's.
    assert [u["update"] for u in applied] == list(range(1, len(applied) + 1))
    versions = [r["version"] for r in history]
    assert versions == sorted(versions) and versions[kill_after] > versions[kill_after - 1]
    # Each client's accountant was given back: ε goes on growing from what was spent.
    for partition in ("0", "1"):
        spent = [r["privacy"]["epsilon_per_client"][partition] for r in history]
        assert spent[-1] > spent[kill_after - 1] > 0
