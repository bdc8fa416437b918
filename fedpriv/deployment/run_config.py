"""``flwr run .``: the experiment a Flower run config asks for.

A run submitted the Flower way (``flwr run . --run-config "rounds=5 train.lr=0.1"``)
carries the keys of ``[tool.flwr.app.config]`` in pyproject.toml, with the user's
values, rather than the validated config ``fedpriv run`` submits. Each key becomes the
Hydra override of the same name and goes through :func:`fedpriv.load_config`, so
validation and its errors are exactly those of ``fedpriv run``. Flower only accepts
keys the pyproject declares, so ``overrides`` carries any other Hydra overrides
(``overrides='partition=dirichlet partition.alpha=0.3'``), applied last.

The federation decides the number of clients: ``num_clients`` is the number of
SuperNodes (``num-partitions`` on a simulated node); a different ``num_clients`` in
``overrides`` is refused rather than silently changed.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

from fedpriv.config import ExperimentConfig, SimulationEngine, load_config
from fedpriv.errors import ConfigError
from fedpriv.node import OUTPUT_KEY

#: The run-config key that is not a Hydra key: more overrides (``output-dir``, the
#: results directory, is :data:`fedpriv.node.OUTPUT_KEY`).
OVERRIDES_KEY = "overrides"
#: Where a run's results go when ``output-dir`` is empty: ``outputs/flwr/<run id>``
#: under the working directory of the ServerApp's process (the SuperLink's).
DEFAULT_OUTPUT_ROOT = Path("outputs", "flwr")

RunConfigValue = bool | int | float | str
#: ``[tool.flwr.app.config]`` in pyproject.toml (a test keeps the two equal): fedpriv's
#: own defaults, so a key left at its value adds no override and a preset chosen in
#: ``overrides`` (``+experiment=demo``) still sets it.
DEFAULTS: dict[str, RunConfigValue] = {
    "data": "digits",
    "partition": "iid",
    "model": "mlp",
    "strategy": "fedavg",
    "privacy": "none",
    "rounds": 10,
    "seed": 0,
    "train.lr": 0.1,
    "train.local_epochs": 2,
    "train.batch_size": 16,
    OVERRIDES_KEY: "",
    OUTPUT_KEY: "",
}
_NUM_CLIENTS = "num_clients"


def overrides_from(run_config: Mapping[str, RunConfigValue], *, num_nodes: int | None) -> list[str]:
    """The Hydra overrides a run config stands for; ``num_nodes``: the federation's
    SuperNodes (``None`` where unknown), adopted as ``num_clients``."""
    overrides = [
        f"{key}={_hydra_value(value)}"
        for key, value in run_config.items()
        if key not in (OVERRIDES_KEY, OUTPUT_KEY) and not _is_default(key, value)
    ]
    extra = run_config.get(OVERRIDES_KEY, "")
    if not isinstance(extra, str):
        raise ConfigError(f"run config {OVERRIDES_KEY}={extra!r} must be a string of overrides")
    try:
        overrides += shlex.split(extra)
    except ValueError as error:
        raise ConfigError(f"run config {OVERRIDES_KEY}={extra!r}: {error}") from None
    if num_nodes is None:
        return overrides
    for given in overrides:
        key, _, value = given.lstrip("+").partition("=")
        if key == _NUM_CLIENTS and value != str(num_nodes):
            raise ConfigError(
                f"{_NUM_CLIENTS}={value} but the federation has {num_nodes} SuperNodes: "
                f"leave {_NUM_CLIENTS} out (flwr run adopts the SuperNodes) or run with "
                f"--federation-config 'num-supernodes={value}'"
            )
    return [*overrides, f"{_NUM_CLIENTS}={num_nodes}"]


def experiment_from(
    run_config: Mapping[str, RunConfigValue], *, run_id: int, num_nodes: int | None
) -> ExperimentConfig:
    """The validated experiment of a ``flwr run`` submission, with its results directory."""
    config = load_config(overrides_from(run_config, num_nodes=num_nodes))
    problems = []
    if not isinstance(config.engine, SimulationEngine):
        problems.append(
            f"engine={config.engine.name}: under flwr run the federation is the engine; "
            "leave engine out (its SuperNodes come from --federation-config)"
        )
    if config.crypto.name != "none":
        problems.append(
            f"crypto={config.crypto.name} needs each device's own key files: run it with "
            "`fedpriv run engine=deployment` (docs/deployment.md) or `fedpriv run`"
        )
    if config.family == "swarm":
        problems.append(
            "family=swarm: its peers start from what the run prepares before the engine "
            "starts (layout, initial model), which flwr run's ClientApps do not get; "
            "run it with `fedpriv run`"
        )
    if problems:
        raise ConfigError("; ".join(problems))
    output = str(run_config.get(OUTPUT_KEY) or "")
    if output:
        return config.replace(output_dir=str(Path(output).resolve()))
    if config.output_dir is None:
        return config.replace(output_dir=str((DEFAULT_OUTPUT_ROOT / str(run_id)).resolve()))
    return config


def _is_default(key: str, value: RunConfigValue) -> bool:
    default = DEFAULTS.get(key)
    return type(default) is type(value) and default == value


def _hydra_value(value: RunConfigValue) -> str:
    """A run-config value as Hydra reads it (TOML's ``true`` is Hydra's ``true``)."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
