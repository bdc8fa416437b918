"""FedBuff under CKKS with DP-SGD on a real fleet on 127.0.0.1 (TLS, node
authentication): the server scales and adds ciphertexts it holds no key for, and the
devices decrypt each version they are sent (docs/crypto.md, "FedBuff under CKKS")."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedpriv import load_config, run
from fedpriv.deployment import LocalFleet
from fedpriv.results import Result

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

FEDBUFF = [
    "data=digits", "model=logreg", "num_clients=3", "rounds=3", "engine.torch_threads=1",
    "strategy=fedbuff", "strategy.buffer_size=2",
    "crypto=ckks", "crypto.preset=ckks-128-async",
    "privacy=dp_sgd", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0",
]  # fmt: skip


def run_on_fleet(tmp_path: Path, overrides: list[str]) -> tuple[Result, Path]:
    """The run on a 3-device TLS fleet keyed for its CKKS parameters; the result and the
    server's key bundle."""
    with LocalFleet(tmp_path, nodes=3, ckks=load_config(overrides).crypto.params) as fleet:
        assert fleet.creds is not None
        keys = fleet.creds.directory
        on_fleet = [*fleet.engine_overrides(), f"crypto.keys_dir={keys}"]
        result = run(load_config([*overrides, *on_fleet, f"output_dir={tmp_path / 'run'}"]))
    return result, keys


def test_fedbuff_under_ckks_with_dp_sgd_runs_on_a_fleet(tmp_path: Path) -> None:
    result, keys = run_on_fleet(tmp_path, FEDBUFF)
    assert not (keys / "client.ctx").exists()  # the server's bundle
    assert result.summary["status"] == "completed", result.summary["stop_reason"]
    assert result.summary["crypto"]["scheme"] == "ckks"
    assert 0 < result.summary["privacy"]["epsilon_max"] < float("inf")
    versions = [record["version"] for record in result.history]
    assert versions == sorted(versions) and versions[-1] >= 3  # buffers of 2 were applied
    assert all(not record["rejected"] for record in result.history)
    # A key holder decrypted and evaluated every version: better than chance (0.1).
    assert all(record["accuracy"] > 0.5 for record in result.history)


MASKED = [
    *[o for o in FEDBUFF if not o.startswith("crypto=")],
    "crypto=ckks_secagg", "crypto.scale_bits=null", "strategy.staleness=constant",
]  # fmt: skip


def test_fedbuff_with_masks_and_dp_sgd_runs_on_a_fleet(tmp_path: Path) -> None:
    """No single key holder: each device masks its update with a one-time mask whose
    shares it seals to the others (signed key ceremony), and idle devices unmask each
    full buffer through the SuperLink (docs/crypto.md, "FedBuff under ckks_secagg")."""
    result, _ = run_on_fleet(tmp_path, MASKED)
    assert result.summary["status"] == "completed", result.summary["stop_reason"]
    assert result.summary["crypto"]["scheme"] == "ckks_secagg"
    assert 0 < result.summary["privacy"]["epsilon_max"] < float("inf")
    for record in result.history:
        assert "refused" not in record["crypto"] and not record["rejected"]
        assert record["version"] + record["crypto"]["buffers_waiting"] == record["updates"] // 2
    assert result.history[-1]["version"] >= 2
    assert all(record["accuracy"] > 0.5 for record in result.history)
