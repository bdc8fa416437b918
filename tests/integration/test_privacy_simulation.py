"""Differential privacy in whole runs: the ledger, budgets, central DP. In-process but
for one run with both kinds of DP and the deadline run, on Ray."""

from __future__ import annotations

import json
import math

import pytest
from opacus.accountants import PRVAccountant

from fedpriv import load_config, run
from fedpriv.data import federate
from fedpriv.privacy.accounting import gaussian_epsilon

pytestmark = pytest.mark.inprocess


def stepped_epsilon(accountant, sigma: float, rate: float, steps: int, delta: float) -> float:
    acct = accountant()
    for _ in range(steps):
        acct.step(noise_multiplier=sigma, sample_rate=rate)
    return float(acct.get_epsilon(delta=delta))


def test_ledger_composes_per_client_and_budget_ends_the_run_cleanly(make_config):
    base = make_config("privacy=dp_sgd", "privacy.noise_multiplier=2.0",
                       "privacy.target_epsilon=null", "num_clients=3", "rounds=4",
                       "train.local_epochs=1")  # fmt: skip
    sizes = [len(p) for p in federate(base.data, base.partition, 3, base.seed).parts]
    n, batches = min(sizes), math.ceil(min(sizes) / base.train.batch_size)
    after = [stepped_epsilon(PRVAccountant, 2.0, 1 / batches, r * batches, 1 / (10 * n))
             for r in (1, 2, 3)]  # fmt: skip
    budget = (after[1] + after[2]) / 2  # two rounds fit, the third would not
    result = run(
        base.replace(privacy=base.privacy.__class__(noise_multiplier=2.0, budget_epsilon=budget))
    )
    history = result.history
    assert [len(r["clients"]) for r in history] == [3, 3, 0]  # round 3 would pass 1.5
    for number, record in enumerate(history[:2], start=1):
        for client in record["clients"]:
            sigma, rate, steps = (
                client["dp-noise-multiplier"],
                client["dp-sample-rate"],
                client["dp-steps"],
            )
            expected = stepped_epsilon(PRVAccountant, sigma, rate, number * steps, client["delta"])
            assert client["epsilon"] == pytest.approx(expected, rel=1e-6)
            assert (
                record["privacy"]["epsilon_per_client"][str(client["partition-id"])]
                == client["epsilon"]
            )
    assert len(history[2]["declined"]) == 3
    assert all(f"budget_epsilon={budget}" in d["reason"] for d in history[2]["declined"])
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["rounds"] == 3 and "privacy budget exhausted" in summary["stop_reason"]
    privacy = summary["privacy"]
    assert privacy["mode"] == "dp_sgd" and privacy["exhausted_clients"] == [0, 1, 2]
    assert privacy["epsilon_max"] == max(c["epsilon"] for c in history[1]["clients"]) <= budget


@pytest.mark.simulation
def test_local_and_central_dp_together(make_config):
    result = run(make_config("privacy=dp_sgd+central", "rounds=2"))
    privacy = result.summary["privacy"]
    expected = gaussian_epsilon([(0.8, 1.0, 2)], privacy["user_level_delta"])
    assert privacy["user_level_epsilon"] == pytest.approx(expected, rel=1e-9)
    assert privacy["central_releases"] == 2 and privacy["epsilon_max"] > 0
    assert [r["privacy"]["central_releases"] for r in result.history] == [1, 2]
    assert all(c["dp-weight"] == 1 for c in result.history[0]["clients"])


def test_central_dp_with_client_side_adaptive_clipping(make_config):
    result = run(make_config("privacy=central", "privacy.side=client", "privacy.clipping=adaptive",
                             "privacy.clipped_count_stddev=1.0"))  # fmt: skip
    assert result.summary["rounds"] == 2 and result.summary["rejected_replies"] == 0
    assert result.summary["privacy"]["user_level_epsilon"] > 0


@pytest.mark.simulation
def test_central_dp_books_the_release_a_straggler_left(tmp_path, register_spec):
    """Two clients sampled, one stalls past the deadline every round: each release
    averages one update under noise sized for two, so the ledger books σ·1/2."""
    stalled = register_spec("stalled_device")
    result = run(
        load_config(
            [
                "data=digits", "model=logreg", "num_clients=2", "rounds=2",
                "engine.cpus_per_client=0.5", f"selection.name={stalled}",
                "selection.round_deadline_s=3", "privacy=central", "privacy.shortfall=account",
                f"output_dir={tmp_path}",
            ]
        )
    )  # fmt: skip
    assert [len(r["stragglers"]) for r in result.history] == [1, 1]
    privacy = result.summary["privacy"]
    assert privacy["central_released_with"] == [{"noise_multiplier": 0.4, "releases": 2}]
    expected = gaussian_epsilon([(0.4, 1.0, 2)], privacy["user_level_delta"])
    assert privacy["user_level_epsilon"] == pytest.approx(expected, rel=1e-9)
    assert privacy["user_level_epsilon"] > gaussian_epsilon(
        [(0.8, 1.0, 2)], privacy["user_level_delta"]
    )


def test_a_client_without_dp_is_rejected_when_the_run_reports_dp(make_config, plain_flower_app):
    """Before the fix every update of a client that applied no DP was accepted, and the
    run printed ε 0.000 and summary.json `epsilon_per_client: {}` under `mode: dp_sgd`."""
    from fedpriv.runtime.apps import build_server_app
    from fedpriv.runtime.inprocess import run_inprocess
    from fedpriv.runtime.runs import open_run

    config = make_config("privacy=dp_sgd", "num_clients=2", "rounds=1")
    opened = open_run(config)
    finished: dict = {}
    server_app = build_server_app(
        opened.strategy,
        make_context=opened.context,
        on_done=lambda history, ctx: finished.update(history=history),
        on_error=lambda error: finished.update(error=error),
    )
    try:
        run_inprocess(server_app, plain_flower_app, config.num_clients, config.engine)
    finally:
        opened.close()
    (record,) = finished["history"]
    assert record["clients"] == [] and len(record["rejected"]) == 2
    assert all("did not train with DP-SGD" in r["reason"] for r in record["rejected"])
    assert record["privacy"]["epsilon_per_client"] == {}
