"""``crypto=ckks_secagg`` on a real fleet on 127.0.0.1 (TLS, node authentication): the
key ceremony runs through the SuperLink, each device keeps its mask keys in its own
``context.state`` (Flower's SuperNode keeps a run's context between messages, whichever
ClientApp process runs each), and a device that dies mid-run is unmasked out."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleet_runs import fedpriv_run, wait_for

from fedpriv import load_config, run
from fedpriv.deployment import LocalFleet
from fedpriv.results import Result, read_metrics

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

BASE = ["data=digits", "model=logreg", "num_clients=3", "rounds=2", "engine.torch_threads=1"]
SECAGG = [*BASE, "crypto=ckks_secagg"]


def fleet_for(tmp_path: Path) -> LocalFleet:
    """A 3-device fleet whose key set has ckks_secagg's CKKS parameters (scale 2^18)."""
    return LocalFleet(tmp_path, nodes=3, ckks=load_config(SECAGG).crypto.params)


def test_masked_fleet_runs_match_plaintext_and_run_with_dp_sgd(tmp_path: Path) -> None:
    with fleet_for(tmp_path) as fleet:
        assert fleet.creds is not None
        on_fleet = [*fleet.engine_overrides(), f"crypto.keys_dir={fleet.creds.directory}"]
        masked = run(load_config([*SECAGG, *on_fleet, f"output_dir={tmp_path / 'masked'}"]))
        private = run(
            load_config([*SECAGG, "privacy=dp_sgd", *on_fleet, f"output_dir={tmp_path / 'dp'}"])
        )
    plain = run(load_config([*BASE, "engine=inprocess", f"output_dir={tmp_path / 'plain'}"]))
    assert masked.summary["crypto"]["scheme"] == "ckks_secagg"
    # The masks cancel in the sum: the same losses as the plaintext run in one process,
    # to the quantization's 2^-20 steps.
    for key in ("loss", "accuracy"):
        assert [r[key] for r in masked.history] == pytest.approx(
            [r[key] for r in plain.history], rel=1e-4, abs=1.01 / 360
        )
    assert all(len(r["clients"]) == 3 and not r["rejected"] for r in masked.history)
    assert private.summary["status"] == "completed"
    assert 0 < private.summary["privacy"]["epsilon_max"] <= 3.0 + 1e-6


def test_a_device_killed_mid_run_is_unmasked_out_and_the_round_completes(tmp_path: Path) -> None:
    """Threshold 2 of 3 (a majority): the two devices left reveal the dead one's mask
    secret shares, and the round's sum opens without its update."""
    out = tmp_path / "run"
    with fleet_for(tmp_path) as fleet:
        assert fleet.creds is not None
        process = fedpriv_run(
            [*SECAGG, *fleet.engine_overrides(), f"crypto.keys_dir={fleet.creds.directory}",
             "engine.round_timeout_s=15", f"hydra.run.dir={out}"]
        )  # fmt: skip
        wait_for(lambda: read_metrics(out / "metrics.jsonl"), process, "round 1")
        fleet.nodes[2].kill()
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
    result = Result.load(out)
    assert result.summary["status"] == "completed", result.summary["stop_reason"]
    first, second = result.history
    assert sorted(c["partition-id"] for c in first["clients"]) == [0, 1, 2]
    assert sorted(c["partition-id"] for c in second["clients"]) == [0, 1]
    assert second["accuracy"] is not None
