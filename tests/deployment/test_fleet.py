"""A real fleet on 127.0.0.1: flower-superlink and three flower-supernode processes with
TLS and registered node keys, driven by ``fedpriv run engine=deployment``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fleet_runs import fedpriv_run, wait_for

from fedpriv.crypto import PRESETS
from fedpriv.crypto.ckks import CkksParams
from fedpriv.deployment import LocalFleet
from fedpriv.results import Result, read_metrics

pytestmark = pytest.mark.deployment

#: Small and quick: logistic regression on digits, one torch thread per device.
BASE = [
    "data=digits",
    "model=logreg",
    "num_clients=3",
    "engine.torch_threads=1",
    "engine.node_wait_s=120",
]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie not yet reaped by its parent counts as gone.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_two_rounds_of_dp_fedavg_under_ckks_on_a_tls_fleet(tmp_path: Path) -> None:
    preset = PRESETS["ckks-128"]
    params = CkksParams(preset.poly_modulus_degree, preset.coeff_mod_bit_sizes, preset.scale_bits)
    with LocalFleet(tmp_path, nodes=3, ckks=params) as fleet:
        assert fleet.creds is not None  # the server's bundle: no client.ctx in it
        assert not (fleet.creds.directory / "client.ctx").exists()
        # Flower's SuperNode, run with fedpriv's shorter waits (fedpriv.deployment.supernode).
        assert all("fedpriv.deployment.supernode" in n.supernode.popen.args for n in fleet.nodes)
        out = tmp_path / "run"
        run = fedpriv_run(
            [
                *BASE,
                *fleet.engine_overrides(),
                "strategy=fedavg",
                "privacy=dp_sgd",
                "crypto=ckks",
                f"crypto.keys_dir={fleet.creds.directory}",
                "rounds=2",
                f"hydra.run.dir={out}",
            ]
        )
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output
        pids = fleet.pids()
        superlink_log = (tmp_path / "logs" / "superlink.log").read_text()
    assert all(gone(pid) for pid in pids), "a fleet process outlived the fleet"

    result = Result.load(out)
    assert result.summary["rounds"] == 2 and result.summary["stop_reason"] is None
    assert result.summary["crypto"]["scheme"] == "ckks"
    assert result.summary["privacy"]["epsilon_max"] > 0
    for record in result.history:
        assert sorted(c["partition-id"] for c in record["clients"]) == [0, 1, 2]
        assert record["accuracy"] is not None  # evaluated by a key holder
        for client in record["clients"]:
            assert client["rss-mb"] > 0 and client["cpu-percent"] >= 0  # device telemetry
            assert client["ckks-encrypt-seconds"] > 0
    assert (out / "config.yaml").is_file() and (out / "clients.json").is_file()
    # Every node joined over TLS with a registered key: the SuperLink ran with auth on.
    assert "SuperNode authentication is disabled" not in superlink_log


def run_killing_a_node_after_round_1(tmp_path: Path, overrides: list[str]) -> list[dict]:
    """Run on a 3-node fleet, kill SuperNode 2 once round 1 is written, and return the
    rounds after the run finished (every fleet process gone)."""
    out = tmp_path / "run"
    with LocalFleet(tmp_path, nodes=3) as fleet:
        run = fedpriv_run(
            [
                *BASE,
                *fleet.engine_overrides(),
                *overrides,
                "engine.round_timeout_s=10",
                f"hydra.run.dir={out}",
            ]
        )
        wait_for(lambda: read_metrics(out / "metrics.jsonl"), run, "round 1")
        fleet.nodes[2].kill()
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output
        pids = fleet.pids()
    assert all(gone(pid) for pid in pids)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_supernode_killed_mid_run_leaves_the_run_to_finish_on_the_rest(tmp_path: Path) -> None:
    history = run_killing_a_node_after_round_1(tmp_path, ["strategy=fedavg", "rounds=2"])
    assert len(history) == 2
    assert len(history[0]["clients"]) == 3
    assert sorted(c["partition-id"] for c in history[1]["clients"]) == [0, 1]
    assert all(r["accuracy"] is not None for r in history)


def test_fedbuff_keeps_updating_on_a_fleet_after_a_supernode_dies(tmp_path: Path) -> None:
    """The asynchronous loop on a real SuperLink (push and pull over gRPC): with one
    SuperNode killed after round 1, the other two make every later update."""
    history = run_killing_a_node_after_round_1(
        tmp_path, ["strategy=fedbuff", "strategy.buffer_size=2", "rounds=3"]
    )
    assert len(history) == 3 and all(r["accuracy"] is not None for r in history)
    # An update of the dead node's may still land early in round 2; none after that.
    assert {c["partition-id"] for c in history[2]["clients"]} <= {0, 1}
    assert len(history[2]["clients"]) >= 3
    assert history[-1]["version"] > history[0]["version"]
