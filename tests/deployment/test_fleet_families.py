"""Vertical and swarm runs on a real fleet on 127.0.0.1: flower-superlink and three
flower-supernode processes with TLS and node authentication, each device holding only its
own bundle of ``fedpriv keys init``, driven by ``fedpriv run engine=deployment``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedpriv import load_config, run
from fedpriv.crypto import PRESETS
from fedpriv.crypto.ckks import CkksParams
from fedpriv.data.vertical import join, vertical_tables
from fedpriv.deployment import LocalFleet
from fedpriv.results import Result

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

#: Three parties on digits; one batch an epoch: each batch is two exchanges on a fleet.
VERTICAL = [
    "family=vertical",
    "vertical.parties=3",
    "num_clients=3",
    "vertical.overlap=0.8",
    "strategy.merge=sum",
    "crypto=ckks",
    "data=digits",
    "train.batch_size=2048",
    "rounds=1",
    "engine.torch_threads=1",
]


def fedpriv_run(overrides: list[str]) -> str:
    """``fedpriv run`` in a child process, as a user runs it; its output."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fedpriv"), "run", *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def ckks_params() -> CkksParams:
    preset = PRESETS["ckks-128"]
    return CkksParams(preset.poly_modulus_degree, preset.coeff_mod_bit_sizes, preset.scale_bits)


def expected_alignment(overrides: list[str]) -> tuple[int, int]:
    """The training and test entities every party holds, from the parties' tables
    directly (what PSI must find without any party revealing its IDs)."""
    config = load_config(overrides)
    s = config.family_settings
    _, tables = vertical_tables(config.data, s.parties, s.split, s.columns, s.overlap, config.seed)
    joined = join(tables)
    return len(joined.ids_train), len(joined.ids_test)


def test_vertical_psi_and_a_ckks_sum_across_three_supernodes(tmp_path: Path) -> None:
    with LocalFleet(tmp_path, nodes=3, ckks=ckks_params()) as fleet:
        assert fleet.creds is not None
        out = tmp_path / "run"
        fedpriv_run(
            [
                *VERTICAL,
                *fleet.engine_overrides(),
                f"crypto.keys_dir={fleet.creds.directory}",
                f"hydra.run.dir={out}",
            ]
        )
        superlink_log = (tmp_path / "logs" / "superlink.log").read_text()
    assert "SuperNode authentication is disabled" not in superlink_log

    result = Result.load(out)
    assert result.summary["status"] == "completed", result.summary["stop_reason"]
    alignment = json.loads((out / "alignment.json").read_text())
    assert alignment["method"] == "psi-ed25519"
    assert (alignment["train_entities"], alignment["test_entities"]) == expected_alignment(VERTICAL)
    (record,) = result.history
    assert sorted(c["party"] for c in record["clients"]) == [0, 1, 2]
    assert record["vertical"]["skipped_batches"] == 0 and not record["rejected"]
    crypto = result.summary["crypto"]
    assert crypto["scheme"] == "ckks" and crypto["expansion"] > 1
    assert crypto["encryption"].startswith("public-key")

    # The same experiment in this process computes the same losses: the parties
    # aligned the same rows in the same order, and the gradients reached every bottom
    # model (CKKS adds ~1e-6 per value; the accuracy on the test entities may move by one).
    local = run(load_config([*VERTICAL, "engine=inprocess", f"output_dir={tmp_path / 'local'}"]))
    (expected,) = local.history
    assert record["vertical"]["train_loss"] == pytest.approx(
        expected["vertical"]["train_loss"], rel=1e-4
    )
    assert record["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert record["accuracy"] == pytest.approx(expected["accuracy"], abs=1.01 / 360)


#: Three peers on digits.
SWARM = [
    "family=swarm",
    "num_clients=3",
    "data=digits",
    "model=logreg",
    "rounds=2",
    "engine.torch_threads=1",
]


@pytest.mark.parametrize(
    "strategy",
    [
        # Gossip with the consensus sum (a CKKS key from the peers' bundles).
        ["strategy=gossip", "swarm.consensus=true"],
        # Every model sealed for the leader, its merge for every peer.
        ["strategy=leader", "swarm.consensus=false"],
        # DiNNO: neighbours' models and the dual variables each peer keeps on its device.
        ["strategy=dinno", "swarm.consensus=false"],
    ],
    ids=["gossip", "leader", "dinno"],
)
def test_swarm_sealed_payloads_across_three_supernodes(tmp_path: Path, strategy: list[str]) -> None:
    out = tmp_path / "run"
    with LocalFleet(tmp_path, nodes=3) as fleet:
        assert fleet.creds is not None
        assert not list(fleet.creds.directory.rglob("peer.key"))  # the relay holds no peer key
        fedpriv_run(
            [
                *SWARM,
                *strategy,
                *fleet.engine_overrides(),
                f"engine.keys_dir={fleet.creds.directory}",
                f"hydra.run.dir={out}",
            ]
        )
    result = Result.load(out)
    assert result.summary["status"] == "completed", result.summary["stop_reason"]
    local = run(
        load_config([*SWARM, *strategy, "engine=inprocess", f"output_dir={tmp_path / 'l'}"])
    )
    for record, expected in zip(result.history, local.history, strict=True):
        swarm = record["swarm"]
        assert swarm["live"] == [0, 1, 2] and not record["rejected"]
        # Every peer opened what its neighbours (or the leader) sealed for it under the
        # pinned keys: the models are the ones a simulation computes.
        assert swarm["accuracy_mean"] == pytest.approx(expected["swarm"]["accuracy_mean"])
        assert record["loss"] == pytest.approx(expected["loss"], rel=1e-5)
        if strategy[0] == "strategy=leader":
            assert swarm["leader"] == expected["swarm"]["leader"] is not None
            assert swarm["merged_accuracy"] == pytest.approx(expected["swarm"]["merged_accuracy"])
        elif strategy[0] == "strategy=gossip":  # the consensus sum under the peers' key
            assert swarm["consensus_distance"] == pytest.approx(
                expected["swarm"]["consensus_distance"], rel=1e-4
            )
