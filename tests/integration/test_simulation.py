"""Whole runs on the in-process engine (fedavg on Ray too): every strategy, bad
clients, a Hydra sweep.

Same config and seed giving the same metrics is tested across processes in
test_resume.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from fedpriv import run
from fedpriv.strategies.horizontal import HORIZONTAL_STRATEGIES
from fedpriv.strategies.horizontal.asynchronous import AsyncSpec

pytestmark = pytest.mark.inprocess

#: The synchronous strategies: one update per client per round (test_async_simulation
#: runs the asynchronous ones).
SYNCHRONOUS = [
    name
    for name in HORIZONTAL_STRATEGIES.names()
    if not isinstance(HORIZONTAL_STRATEGIES.create({"name": name}), AsyncSpec)
]


@pytest.mark.parametrize(
    "strategy",
    [pytest.param(s, marks=pytest.mark.simulation) if s == "fedavg" else s for s in SYNCHRONOUS],
)
def test_every_strategy_runs_a_whole_run(strategy, make_config, check_run_directory):
    result = run(make_config(f"strategy={strategy}"))
    check_run_directory(result, clients=4, rounds=2)
    for record in result.history:
        assert sorted(c["partition-id"] for c in record["clients"]) == [0, 1, 2, 3]
        assert record["rejected"] == []
    # Per-node state lives in context.state and survives across rounds.
    assert sorted(c["rounds-trained"] for c in result.history[-1]["clients"]) == [2, 2, 2, 2]
    assert result.summary["strategy"] == strategy


def test_bad_client_replies_are_rejected_and_the_round_goes_on(make_config, register_spec):
    """One misbehaving client per kind of bad reply (faulty_family.py); every kind is
    rejected with its reason, counted, and the round aggregates the honest two."""
    family = register_spec("faulty_horizontal")
    result = run(make_config(f"family.name={family}", "num_clients=9", "engine.max_reply_mb=1"))
    assert result.summary["rounds"] == 2 and result.summary["rejected_replies"] == 2 * 7
    expected = [
        "NaN or Inf", "client error", "NaN or Inf", "is float32[1], expected float32",
        "is float64", "expected one MetricRecord, got 0", "exceeds engine.max_reply_mb=1",
    ]  # fmt: skip
    for record in result.history:
        reasons = {r["node_id"]: r["reason"] for r in record["rejected"]}
        assert len(reasons) == 7
        for want in expected:
            assert any(want in reason for reason in reasons.values()), (want, reasons)
        assert sorted(c["partition-id"] for c in record["clients"]) == [7, 8]
    assert result.final["accuracy"] > 0.2


@pytest.mark.processes
def test_hydra_multirun_and_console_report(tmp_path):
    import subprocess

    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "fedpriv.experiments.run", "-m", "strategy=fedavg,fedprox",
        "rounds=1", "num_clients=3", "model=logreg", "engine=inprocess",
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in sweep.iterdir()} >= {"0", "1"}
    fedpriv = Path(sys.executable).with_name("fedpriv")
    shown = subprocess.run([fedpriv, "report", sweep], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "fedavg" in shown.stdout and "fedprox" in shown.stdout
    assert (sweep / "report.csv").read_text().count("\n") == 3  # header + 2 runs × 1 round


@pytest.mark.processes
def test_console_script_runs_and_reports_bad_config(tmp_path):
    import subprocess

    fedpriv = Path(sys.executable).with_name("fedpriv")
    bad = subprocess.run(
        [fedpriv, "run", "train.lr=-1"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "train.lr=-1.0 must be > 0" in bad.stderr


def test_demo_preset_smoke_runs_reduced(make_config):
    result = run(make_config("+experiment=demo", "rounds=1", "num_clients=3"))
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert result.summary["rounds"] == 1 and config["train"]["momentum"] == 0.9
