"""Malicious clients in whole in-process runs: 20 % of the clients send their update
reversed and boosted (adversary=sign_flip). FedAvg collapses; the robust aggregates
(coordinate median, trimmed mean, Krum) end within 5 points of clean FedAvg."""

from __future__ import annotations

import json

import pytest

from fedpriv import load_config, run

pytestmark = pytest.mark.inprocess

BASE = [
    "engine=inprocess", "num_clients=10", "rounds=5", "model=logreg", "train.local_epochs=2",
    "train.lr=0.1", "train.momentum=0.9",
]  # fmt: skip
ROBUST = {
    "fedmedian": ["strategy=fedmedian"],
    "fedtrimmedavg": ["strategy=fedtrimmedavg"],
    "krum": ["strategy=krum", "strategy.num_malicious_nodes=2"],
}


def final_accuracy(tmp_path, name: str, *overrides: str) -> float:
    result = run(load_config([*BASE, *overrides, f"output_dir={tmp_path / name}"]))
    return float(result.final["accuracy"])


def test_robust_strategies_survive_sign_flippers_where_fedavg_does_not(tmp_path):
    clean = final_accuracy(tmp_path, "clean")
    assert clean > 0.8
    attacked = final_accuracy(tmp_path, "fedavg", "adversary=sign_flip")
    clients = json.loads((tmp_path / "fedavg" / "clients.json").read_text())
    assert len(clients["adversaries"]) == 2
    assert attacked < clean - 0.3
    for name, strategy in ROBUST.items():
        robust = final_accuracy(tmp_path, name, "adversary=sign_flip", *strategy)
        assert robust > clean - 0.05, (name, robust, clean)
