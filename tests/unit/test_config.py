"""Config validation: bad values fail early with the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedpriv import ConfigError, ExperimentConfig, from_mapping, load_config, run
from fedpriv.config import strategy_registry
from fedpriv.families import FAMILIES

CONF = Path(__file__).parents[2] / "conf"


def problems_of(*overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=list(overrides))
    return str(caught.value)


def test_defaults_compose_to_typed_config():
    cfg = load_config()
    assert isinstance(cfg, ExperimentConfig)
    assert (cfg.data.name, cfg.partition.name, cfg.model.name, cfg.strategy.name) == (
        "digits",
        "iid",
        "mlp",
        "fedavg",
    )
    assert cfg.family == "horizontal" and cfg.num_clients == 10 and cfg.rounds == 10


def test_overrides_reach_typed_fields():
    cfg = load_config(
        overrides=["strategy=fedprox", "strategy.proximal_mu=0.5", "partition=dirichlet",
                   "partition.alpha=0.3", "num_clients=20", "rounds=15", "train.lr=0.1"]
    )  # fmt: skip
    assert cfg.strategy.proximal_mu == 0.5
    assert cfg.partition.alpha == 0.3
    assert (cfg.num_clients, cfg.rounds, cfg.train.lr) == (20, 15, 0.1)


def test_to_dict_round_trips():
    cfg = load_config(overrides=["strategy=multikrum", "model=cnn", "partition=shards"])
    assert from_mapping(cfg.to_dict()) == cfg


def test_overwrite_is_recorded_only_when_set():
    """``overwrite`` is how a run started, not what it computes: config.yaml (which
    reports group runs by) leaves it out unless it was set."""
    assert "overwrite" not in load_config().to_dict()
    cfg = load_config(overrides=["overwrite=true"])
    assert cfg.overwrite and from_mapping(cfg.to_dict()) == cfg
    assert "overwrite='maybe' has the wrong type; expected bool" in problems_of("overwrite=maybe")


def test_unknown_group_option_lists_the_available_ones():
    message = problems_of("strategy=nope")
    assert "strategy/nope" in message and "fedavg" in message and "krum" in message


def test_unknown_names_list_the_choices():
    mapping = load_config().to_dict()
    for group, registry_name in (
        ("strategy", "strategy"),
        ("data", "dataset"),
        ("partition", "partitioner"),
    ):
        bad = {**mapping, group: {"name": "bogus"}}
        with pytest.raises(ConfigError) as caught:
            from_mapping(bad)
        message = str(caught.value)
        assert f"unknown {registry_name} {group}.name='bogus'" in message
        assert "choose one of:" in message


def test_negative_learning_rate_names_key_value_and_rule():
    message = problems_of("train.lr=-0.1")
    assert "train.lr=-0.1 must be > 0" in message


def test_alpha_must_be_positive():
    assert "partition.alpha=0.0 must be > 0" in problems_of(
        "partition=dirichlet", "partition.alpha=0"
    )
    assert "partition.alpha=-1.0" in problems_of("partition=dirichlet", "partition.alpha=-1")


def test_every_problem_is_reported_together():
    message = problems_of("train.lr=-1", "rounds=0", "num_clients=0", "train.batch_size=0")
    assert "4 configuration problems" in message
    for part in ("train.lr=-1", "rounds=0", "num_clients=0", "train.batch_size=0"):
        assert part in message


def test_parameter_of_another_choice_is_refused():
    message = problems_of("+partition.alpha=0.3")  # iid has no alpha
    assert "partition.alpha is not a parameter of partitioner 'iid'" in message


def test_wrong_type_is_refused():
    assert "train.lr='fast' has the wrong type" in problems_of("train.lr=fast")


def test_unknown_top_level_key_is_refused():
    assert "unknown config key 'nmu_clients'" in problems_of("+nmu_clients=3")


def test_krum_needs_enough_clients():
    message = problems_of("strategy=krum", "strategy.num_malicious_nodes=2", "num_clients=4")
    assert "strategy.num_malicious_nodes=2" in message and "Krum needs" in message


def test_unknown_crypto_schemes_are_refused_with_the_choices():
    assert (
        "unknown crypto scheme crypto.name='paillier'; choose one of: ckks, ckks_secagg, none"
        in (problems_of("crypto.name=paillier"))
    )


def test_more_clients_than_samples_fails_before_the_engine_starts(tmp_path):
    cfg = load_config(overrides=["data=wine", "num_clients=500", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"num_clients=500 exceeds the 142 training samples"):
        run(cfg)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_cnn_on_tabular_data_fails_before_the_engine_starts(tmp_path):
    cfg = load_config(overrides=["data=wine", "model=cnn", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="model=cnn needs image inputs"):
        run(cfg)


@pytest.mark.parametrize(
    "group,option",
    sorted(
        (str(path.parent.relative_to(CONF)), path.stem)
        for path in [*CONF.glob("*/*.yaml"), *CONF.glob("arms/*/*.yaml")]
        if path.parent.name not in ("experiment",)
    ),
)
def test_every_config_option_composes(group, option, tmp_path):
    # conf/arms/<study>/ holds a study's arms, added with +arms/<study>=...
    overrides = [f"+{group}={option}" if group.startswith("arms/") else f"{group}={option}"]
    if (group, option) in (("data", "csv"), ("data", "npz")):
        overrides.append(f"data.path={tmp_path / 'file'}")
    if group == "strategy":  # the family whose registry holds the strategy
        (family,) = [name for name in FAMILIES if option in strategy_registry(name)]
        overrides.append(f"family={family}")
    cfg = load_config(overrides=overrides)
    if group == "strategy":
        assert cfg.strategy.name == option and cfg.family == family


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_preset_composes(preset):
    assert isinstance(load_config(overrides=[f"+experiment={preset}"]), ExperimentConfig)


def test_every_job_of_every_study_preset_composes_and_validates():
    from fedpriv.experiments.studies import presets, sweep_points

    names = presets()
    assert {"dp_utility", "he_cost", "noniid", "unification", "batch_size",
            "swarm_vs_fedavg", "replicate_vs_split"} <= set(names)  # fmt: skip
    for name in names:
        for point in sweep_points(name):
            config = load_config([f"+experiment={name}", *point])
            for override in point:
                key, _, value = override.lstrip("+").partition("=")
                if key == "arms/unification":  # vertical merges train in the horizontal family
                    family = "vertical" if value == "split_learning" else "horizontal"
                    assert config.family == family, (name, point)
                    if value.startswith("vertical_"):
                        assert config.partition.name == "features", (name, point)
                elif key in ("model", "crypto", "partition", "strategy", "family"):
                    chosen = config.family if key == "family" else getattr(config, key).name
                    assert chosen == value, (name, point)


def test_replace_validates_like_the_command_line():
    """It used to copy without checking: run(cfg.replace(rounds=0)) started Ray and
    returned no rounds, while the command line refused rounds=0."""
    config = load_config([])
    with pytest.raises(ConfigError, match=r"rounds=0 must be >= 1"):
        config.replace(rounds=0)
    with pytest.raises(ConfigError, match=r"max_idle_rounds=-2 must be >= 0"):
        config.replace(max_idle_rounds=-2)
    changed = config.replace(rounds=3, output_dir="elsewhere")
    assert (changed.rounds, changed.output_dir, config.rounds) == (3, "elsewhere", 10)


def test_a_value_the_config_leaves_to_the_user_is_required_by_name():
    """data=csv leaves data.path as ??? ; it used to pass validation as the path '???'."""
    with pytest.raises(ConfigError, match=r"^data\.path is required: set data\.path=<value>$"):
        load_config(["data=csv"])


def test_a_ray_cluster_address_is_host_port_and_leaves_cpus_to_the_cluster():
    assert load_config(["engine.ray_address=10.0.0.5:6379"]).engine.ray_address == "10.0.0.5:6379"
    with pytest.raises(ConfigError, match=r"engine\.num_cpus=2 must be null with ray_address"):
        load_config(["engine.ray_address=127.0.0.1:6379", "engine.num_cpus=2"])
    with pytest.raises(ConfigError, match=r"engine\.ray_address='ray head' must be host:port"):
        load_config(["engine.ray_address=ray head"])


def test_the_command_line_check_applies_deletions_like_hydra():
    """``~data.limit`` (no "=") used to be dropped by the pre-check, which then refused
    the limit that Hydra itself would have deleted."""
    from fedpriv.config import check_command_line

    check_command_line(["+experiment=unification", "data=synthetic", "~data.limit"])
    with pytest.raises(ConfigError, match=r"data\.limit is not a parameter of dataset 'synthetic'"):
        check_command_line(["+experiment=unification", "data=synthetic"])
