"""The compatibility table is what config validation does: every cell `fedpriv
capabilities` prints as yes builds, every no is refused with the cell's reason."""

from __future__ import annotations

import pytest

from fedpriv import ConfigError, from_mapping, load_config
from fedpriv.cli import main
from fedpriv.compatibility import FEATURES, render, table
from fedpriv.families import FAMILIES

#: A config using each feature, otherwise as plain as possible (σ given, so that no
#: rule about calibrating it applies).
USING = {
    "dp_sgd": ["privacy=dp_sgd", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"],
    "central_dp": ["privacy=central"],
    "ckks": ["crypto=ckks"],
    "adversary": ["adversary=noise"],
    "fleet": ["engine=deployment"],
    "gpu": ["train.device=cuda"],  # a node's hardware is checked on the node, not here
}
#: What a family needs besides (vertical adds ciphertexts only under a sum-able merge;
#: a swarm's relay on a fleet reads its consensus context from the server's bundle).
ALSO = {
    ("vertical", "ckks"): ["strategy.merge=sum"],
    ("swarm", "fleet"): ["engine.keys_dir=keys/superlink"],
}
#: What a strategy needs besides (FedBuff's staleness scaling takes a rescale level).
STRATEGY_ALSO = {("fedbuff", "ckks"): ["crypto.preset=ckks-128-async"]}
#: A family's own way to use a feature: a swarm encrypts only with masks (its leader
#: mode), and without the consensus measurement.
INSTEAD = {("swarm", "ckks"): ["crypto=ckks_secagg", "swarm.consensus=false"]}
ROWS = list(table(FAMILIES))
#: The setting each feature's refusal must name.
NAMED = {"dp_sgd": "privacy=dp_sgd", "central_dp": "privacy=central", "ckks": "crypto=ckks",
         "adversary": "adversary=noise", "fleet": "engine=deployment",
         "gpu": "train.device=cuda"}  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.family}-{r.strategy}")
def test_each_cell_is_what_validation_decides(row):
    for feature in FEATURES:
        using = INSTEAD.get((row.family, feature), USING[feature])
        overrides = [f"family={row.family}", f"strategy={row.strategy}", *using,
                     *ALSO.get((row.family, feature), []),
                     *STRATEGY_ALSO.get((row.strategy, feature), [])]  # fmt: skip
        if row.cells[feature] is None:
            assert load_config(overrides).strategy.name == row.strategy, feature
        else:
            with pytest.raises(ConfigError) as refused:
                load_config(overrides)
            assert NAMED[feature] in str(refused.value), feature


def test_the_grid_is_what_the_command_prints(capsys):
    assert main(["capabilities"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == render(ROWS)
    assert "horizontal  fedavg" in printed and "Other combinations refused:" in printed


def test_linear_strategies_and_fedbuff_alone_aggregate_ciphertexts():
    ckks = {
        row.strategy for row in ROWS if row.family == "horizontal" and row.cells["ckks"] is None
    }
    assert ckks == {"fedavg", "fedprox", "fedavgm", "fedbuff"}


def test_a_refused_pair_of_settings_names_both_and_what_works():
    mapping = load_config(["privacy=central"]).to_dict()
    with pytest.raises(ConfigError) as refused:
        from_mapping({**mapping, "crypto": {"name": "ckks"}})
    message = str(refused.value)
    assert "crypto=ckks cannot be combined with privacy=central" in message
    assert "use privacy=dp_sgd" in message


def test_masks_run_on_a_fleet_for_horizontal_and_the_swarm_leader():
    """Both masked paths run on a fleet (tests/deployment/test_fleet_secagg.py): each
    device builds its masking mod from its own bundle."""
    fleet = ["engine=deployment", "crypto.keys_dir=/keys"]
    assert load_config(["crypto=ckks_secagg", *fleet]).crypto.name == "ckks_secagg"
    swarm = ["family=swarm", "strategy=leader", "num_clients=3", "swarm.consensus=false"]
    config = load_config([*swarm, "crypto=ckks_secagg", *fleet, "engine.keys_dir=/keys"])
    assert (config.family, config.crypto.name) == ("swarm", "ckks_secagg")


def test_fedbuff_runs_masked_with_the_async_preset_at_its_own_scale_unweighted():
    """FedBuff's masks are removed before encryption: the offset holds real values, so
    the masked integers' scale 2^18 is refused with the setting that fixes it; and
    staleness weights on masked integers would show their low digits."""
    masked = ["strategy=fedbuff", "crypto=ckks_secagg", "crypto.preset=ckks-128-async"]
    config = load_config([*masked, "crypto.scale_bits=null", "strategy.staleness=constant"])
    assert config.crypto.params.scale_bits == 36
    with pytest.raises(ConfigError, match=r"set crypto\.scale_bits=null"):
        load_config([*masked, "strategy.staleness=constant"])
    with pytest.raises(ConfigError, match=r"set strategy\.staleness=constant"):
        load_config([*masked, "crypto.scale_bits=null"])
    with pytest.raises(ConfigError, match="fedasync rescales the encrypted model"):
        load_config(["strategy=fedasync", "crypto=ckks_secagg", "crypto.scale_bits=null"])
