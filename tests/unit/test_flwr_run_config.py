"""`flwr run .`'s run config → fedpriv's experiment (fedpriv/deployment/run_config.py):
the keys pyproject declares are fedpriv's defaults, overrides given the Flower way reach
`fedpriv.load_config` as Hydra overrides, and the federation sets num_clients."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict, fuse_dicts, parse_config_args

from fedpriv import __version__, load_config
from fedpriv.deployment.run_config import (
    DEFAULTS,
    OUTPUT_KEY,
    OVERRIDES_KEY,
    experiment_from,
    overrides_from,
)
from fedpriv.errors import ConfigError

ROOT = Path(__file__).parents[2]
RESERVED = (OVERRIDES_KEY, OUTPUT_KEY)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def submitted(run_config: str) -> dict:
    """The run config a ServerApp gets for `flwr run . --run-config RUN_CONFIG`, fused
    by Flower's own functions from the pyproject's `[tool.flwr.app.config]`."""
    declared = flatten_dict(PYPROJECT["tool"]["flwr"]["app"]["config"])
    return fuse_dicts(declared, parse_config_args([run_config]), check_keys=True)


def test_the_pyproject_declares_the_keys_and_defaults_the_apps_know():
    assert flatten_dict(PYPROJECT["tool"]["flwr"]["app"]["config"]) == DEFAULTS
    # Flower refuses an app whose [project] has no static version.
    assert PYPROJECT["project"]["version"] == __version__


def test_the_declared_defaults_are_fedprivs_own():
    hydra_keys = {key: value for key, value in DEFAULTS.items() if key not in RESERVED}
    explicit = [f"{key}={value}" for key, value in hydra_keys.items()]
    assert load_config(explicit).to_dict() == load_config([]).to_dict()


def test_changed_keys_become_hydra_overrides_and_defaults_add_none():
    run_config = submitted("strategy='fedprox' rounds=5 train.lr=0.2 seed=0")
    assert overrides_from(run_config, num_nodes=None) == [
        "strategy=fedprox",
        "rounds=5",
        "train.lr=0.2",
    ]


def test_overrides_come_last_so_a_preset_still_sets_the_declared_keys():
    run_config = submitted("overrides='+experiment=demo partition.alpha=0.3 data=wine'")
    assert overrides_from(run_config, num_nodes=3) == [
        "+experiment=demo",
        "partition.alpha=0.3",
        "data=wine",
        "num_clients=3",
    ]
    config = experiment_from(submitted("overrides='privacy=dp_sgd'"), run_id=7, num_nodes=10)
    assert config.train.lr == 0.5 and config.train.batch_size == 128  # the group's own


def test_the_federation_sets_num_clients_and_a_different_one_is_refused():
    config = experiment_from(submitted("rounds=2"), run_id=7, num_nodes=3)
    assert config.num_clients == 3 and config.rounds == 2
    same = experiment_from(submitted("overrides='num_clients=3'"), run_id=7, num_nodes=3)
    assert same.num_clients == 3
    with pytest.raises(ConfigError, match=r"num_clients=5 but the federation has 3 SuperNodes"):
        experiment_from(submitted("overrides='num_clients=5'"), run_id=7, num_nodes=3)


def test_a_bad_key_or_value_fails_as_fedpriv_run_fails():
    for bad in ("strategy=fedprx", "train.lrr=0.1", "rounds=0"):
        with pytest.raises(ConfigError) as expected:
            load_config([bad])
        with pytest.raises(ConfigError) as got:
            experiment_from(submitted(f"overrides='{bad}'"), run_id=7, num_nodes=2)
        assert str(got.value) == str(expected.value)
    with pytest.raises(ConfigError, match="overrides='strategy=\"fedprox': No closing"):
        overrides_from({"overrides": 'strategy="fedprox'}, num_nodes=None)


def test_settings_flwr_run_cannot_honour_are_refused():
    with pytest.raises(ConfigError, match=r"crypto=ckks needs each device's own key files"):
        experiment_from(submitted("overrides='crypto=ckks'"), run_id=7, num_nodes=2)
    with pytest.raises(ConfigError, match=r"engine=inprocess: under flwr run the federation"):
        experiment_from(submitted("overrides='engine=inprocess'"), run_id=7, num_nodes=2)
    with pytest.raises(ConfigError, match=r"family=swarm: .* run it with `fedpriv run`"):
        experiment_from(submitted("overrides='family=swarm'"), run_id=7, num_nodes=3)


def test_results_go_to_outputs_flwr_run_id_unless_output_dir_is_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = experiment_from(submitted("rounds=2"), run_id=42, num_nodes=2)
    assert config.output_dir == str(tmp_path / "outputs" / "flwr" / "42")
    given = experiment_from(submitted(f"output-dir='{tmp_path / 'x'}'"), run_id=42, num_nodes=2)
    assert given.output_dir == str(tmp_path / "x")
