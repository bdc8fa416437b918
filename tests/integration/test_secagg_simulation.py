"""crypto=ckks_secagg in whole runs with DP-SGD: the same model as plaintext FedAvg,
FedProx and FedAvgM (the masks cancel exactly), a round of dropouts within the
tolerance, and the combinations it refuses. In-process, one run on Ray."""

from __future__ import annotations

import json

import pytest

from fedpriv import run
from fedpriv.errors import ConfigError

pytestmark = pytest.mark.inprocess

#: Seeded DP noise, so that two runs draw the same noise and can be compared.
DP = ("privacy=dp_sgd", "privacy.secure_noise=false")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedavgm"])
def test_masked_run_matches_the_plaintext_run_with_dp_sgd(strategy, make_config, tmp_path):
    overrides = (f"strategy={strategy}", "rounds=2", "model=mlp", *DP)
    plain = run(make_config(*overrides))
    masked = run(make_config(*overrides, "crypto=ckks_secagg", f"output_dir={tmp_path / 'm'}"))
    for key in ("accuracy", "loss"):
        assert [r[key] for r in masked.history] == pytest.approx(
            [r[key] for r in plain.history], abs=1e-4
        )
    summary = json.loads((masked.run_dir / "summary.json").read_text())
    assert summary["crypto"]["scheme"] == "ckks_secagg"
    assert summary["crypto"]["threshold"] == 3 and summary["crypto"]["refused_rounds"] == 0
    assert masked.summary["privacy"]["epsilon_max"] == plain.summary["privacy"]["epsilon_max"]
    for record in masked.history:
        assert record["crypto"]["unmask_seconds"] > 0
        assert all("epsilon" in c for c in record["clients"])


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (("family=vertical", "strategy=splitnn"), "vertical parties exchange embeddings"),
        (("strategy=fedasync",), "fedasync rescales the encrypted model"),
        (("strategy=fedbuff", "crypto.preset=ckks-128-async"), "set crypto.scale_bits=null"),
        (("strategy=fedbuff", "crypto.scale_bits=null"), "low-order digits"),
        (("strategy=fedmedian",), "needs the plaintext updates"),
    ],
)
def test_refused_combinations_say_why(overrides, says, make_config):
    with pytest.raises(ConfigError, match=says):
        run(make_config("crypto=ckks_secagg", *overrides))


@pytest.mark.simulation
def test_masked_run_on_ray_keeps_keys_in_each_nodes_context(make_config):
    """On Ray the handlers run in actors shared by nodes: each node's mask keys must
    travel in its own Flower context between the ceremony and the rounds."""
    result = run(make_config("crypto=ckks_secagg", "rounds=2", "model=mlp", *DP))
    assert [r["contributors"] for r in result.history] == [4, 4]
    assert result.summary["crypto"]["refused_rounds"] == 0
    assert all(r["accuracy"] > 0.5 for r in result.history)


@pytest.mark.simulation
def test_a_straggler_within_the_tolerance_is_unmasked_out(make_config, register_spec):
    """Partition 1 misses every round's deadline (on Ray: the in-process engine waits
    for it): round 1 rebuilds its mask secret and removes its masks; from round 2 it is
    no longer a round's client (its masks are known), and the other three aggregate."""
    result = run(
        make_config(
            "crypto=ckks_secagg",
            "rounds=2",
            "model=logreg",
            f"selection.name={register_spec('stalled_device')}",
            "selection.round_deadline_s=6",  # the stall is 8 s; a loaded machine needs room
            "engine.cpus_per_client=0.5",
        )
    )
    assert [r["contributors"] for r in result.history] == [3, 3]
    assert all(sorted(int(c["partition-id"]) for c in r["clients"]) == [0, 2, 3]
               for r in result.history)  # fmt: skip
    assert all(r["accuracy"] > 0.2 for r in result.history)
    assert result.summary["crypto"]["refused_rounds"] == 0
