"""``crypto=ckks_secagg`` on a real fleet on 127.0.0.1 (TLS, node authentication): the
key ceremony runs through the SuperLink, each device keeps its mask keys in its own
``context.state`` (Flower's SuperNode keeps a run's context between messages, whichever
ClientApp process runs each), and a device that dies mid-run is unmasked out. The swarm
leader merges masked models the same way, each peer's masking mod built from its own
bundle."""

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


#: A swarm whose leader merges the peers' masked ciphertexts (it reads only the merge).
SWARM = [
    "family=swarm", "strategy=leader", "swarm.consensus=false", "num_clients=3",
    "data=digits", "model=logreg", "rounds=2", "engine.torch_threads=1", "crypto=ckks_secagg",
]  # fmt: skip


def test_a_swarm_leader_merges_masked_models_across_three_supernodes(tmp_path: Path) -> None:
    with fleet_for(tmp_path) as fleet:
        assert fleet.creds is not None
        keys = fleet.creds.directory
        on_fleet = [*fleet.engine_overrides(), f"crypto.keys_dir={keys}", f"engine.keys_dir={keys}"]
        masked = run(load_config([*SWARM, *on_fleet, f"output_dir={tmp_path / 'masked'}"]))
        private = run(
            load_config([*SWARM, "privacy=dp_sgd", *on_fleet, f"output_dir={tmp_path / 'dp'}"])
        )
    plain = SWARM[:-1]  # the same swarm, the leader reading every model in one process
    local = run(load_config([*plain, "engine=inprocess", f"output_dir={tmp_path / 'plain'}"]))
    assert masked.summary["crypto"]["scheme"] == "ckks_secagg"
    for record, expected in zip(masked.history, local.history, strict=True):
        swarm = record["swarm"]
        assert swarm["live"] == [0, 1, 2] and not record["rejected"]
        # The masks cancel in the leader's sum: its merge is the plaintext leader's, to
        # the quantization's 2^-20 steps.
        assert swarm["leader"] == expected["swarm"]["leader"] is not None
        assert swarm["merged_accuracy"] == pytest.approx(
            expected["swarm"]["merged_accuracy"], abs=1.01 / 360
        )
        assert record["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert private.summary["status"] == "completed", private.summary["stop_reason"]
    assert all(r["swarm"]["live"] == [0, 1, 2] for r in private.history)
    assert 0 < private.summary["privacy"]["epsilon_max"] <= 3.0 + 1e-6
