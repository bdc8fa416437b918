"""Audits of whole in-process runs (attack=..., fedpriv audit): each attack reads what the run
produced, and encryption leaves the server nothing to attack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedpriv import load_config, run
from fedpriv.attacks.runs import audit_run

pytestmark = pytest.mark.inprocess

SMALL = ["engine=inprocess", "num_clients=3", "rounds=2", "model=logreg"]


@pytest.mark.processes
def test_dp_run_is_audited_for_membership_and_gradient_inversion(tmp_path):
    config = load_config([*SMALL, "privacy=dp_sgd", "attack=membership", f"output_dir={tmp_path}"])
    result = run(config)
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert result.summary["audit"]["membership"] == audit["membership"]
    for attack in ("loss_threshold", "calibrated"):
        assert 0.0 <= audit["membership"][attack]["auc"] <= 1.0
        assert audit["membership"][attack]["num_members"] > 0
    # The console command adds another attack to the same file.
    fedpriv = Path(sys.executable).with_name("fedpriv")
    done = subprocess.run(
        [fedpriv, "audit", tmp_path, "--attack", "gradient_inversion"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    inversion = json.loads((tmp_path / "audit.json").read_text())["gradient_inversion"]
    sigma = result.history[0]["clients"][0]["dp-noise-multiplier"]
    assert inversion["possible"] and inversion["update"].startswith(f"DP-SGD, σ={sigma:.3g}")
    assert inversion["mse"] > inversion["mse_of_mean_guess"] / 10  # noise, not a digit
    assert set(audit) <= set(json.loads((tmp_path / "audit.json").read_text()))


def test_encrypted_run_leaves_the_server_nothing_to_attack(tmp_path):
    result = run(load_config([*SMALL, "crypto=ckks", "attack=gradient_inversion",
                              f"output_dir={tmp_path}"]))  # fmt: skip
    inversion = result.summary["audit"]["gradient_inversion"]
    assert inversion["possible"] is False and "CKKS ciphertexts" in inversion["reason"]
    membership = audit_run(tmp_path, "membership")
    assert membership["possible"] is False and "ciphertexts" in membership["reason"]


def test_vertical_run_is_audited_for_label_inference(tmp_path):
    result = run(load_config(["engine=inprocess", "family=vertical", "data=breast_cancer",
                              "rounds=1", "attack=label_inference",
                              f"output_dir={tmp_path}"]))  # fmt: skip
    found = result.summary["audit"]["label_inference"]
    assert found["possible"]
    assert found["inference"]["accuracy"] > found["inference"]["chance"] + 0.2
