"""Swarm leader mode under crypto=ckks_secagg in whole runs with DP-SGD: on Ray, every
sync merges all four peers' masked models; in process, the same merges as the plaintext
leader (seeded DP noise, so both runs draw the same), and a crashed peer within the
tolerance is unmasked out while the others still merge."""

from __future__ import annotations

import pytest

from fedpriv import load_config, run
from fedpriv.config import from_mapping

pytestmark = pytest.mark.inprocess

#: Digits, 4 peers, 2 syncs, DP-SGD with noise seeded (so two runs compare).
BASE = ("family=swarm", "strategy=leader", "num_clients=4", "rounds=2", "model=logreg",
        "train.lr=0.1", "swarm.consensus=false", "privacy=dp_sgd")  # fmt: skip
MASKED = ("crypto=ckks_secagg",)


def config(tmp_path, *overrides: str, name: str = "run"):
    return load_config([*BASE, f"output_dir={tmp_path / name}", *overrides])


def faulty(config, family: str):
    """``config`` with a test family of :mod:`faulty_swarm` instead of ``swarm``."""
    mapping = config.to_dict()
    mapping["family"] = {"name": family}
    return from_mapping(mapping)


@pytest.mark.simulation
def test_masked_leader_runs_on_ray_with_dp_sgd(tmp_path):
    result = run(config(tmp_path, *MASKED, "engine=simulation"))
    assert result.summary["stop_reason"] is None
    for record in result.history:
        swarm = record["swarm"]
        assert swarm["masked_from"] == 4 and swarm["threshold"] == 3
        assert swarm["merged_accuracy"] is not None and swarm["merged_accuracy"] > 0.2
        assert all("epsilon" in c for c in record["clients"])
    assert result.summary["privacy"]["epsilon_max"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("merge", ["mean", "weighted_mean"])
def test_masked_merges_equal_the_plaintext_leaders(tmp_path, merge):
    seeded = ("privacy.secure_noise=false", "engine=inprocess", f"strategy.merge={merge}")
    plain = run(config(tmp_path, *seeded, name="plain"))
    masked = run(config(tmp_path, *seeded, *MASKED, name="masked"))
    for p, m in zip(plain.history, masked.history, strict=True):
        assert p["swarm"]["merged_accuracy"] is not None  # the plain leader merges too
        assert m["swarm"]["merged_accuracy"] == pytest.approx(p["swarm"]["merged_accuracy"],
                                                              abs=1e-4)  # fmt: skip
        assert m["loss"] == pytest.approx(p["loss"], abs=1e-4)
    assert masked.summary["privacy"]["epsilon_max"] == plain.summary["privacy"]["epsilon_max"]


@pytest.mark.slow
def test_a_crashed_peer_within_the_tolerance_is_unmasked_out(tmp_path, register_spec):
    """Peer 3 crashes in sync 2 (after its masks were agreed): the relay rebuilds its mask
    secret from three peers' shares, and the leader merges the other three."""
    crashing = register_spec("crashing_swarm")
    overrides = (*MASKED, "engine=inprocess", "swarm.min_peers=3", "rounds=3")
    result = run(faulty(config(tmp_path, *overrides), crashing))
    assert [r["swarm"]["masked_from"] for r in result.history] == [4, 3, 3]
    assert all(r["swarm"]["merged_accuracy"] is not None for r in result.history)
