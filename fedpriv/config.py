"""Typed experiment configuration, validated once at the edge.

Hydra (or a plain mapping) gives nested dicts; :func:`from_mapping` turns them into an
:class:`ExperimentConfig` of frozen dataclasses, reporting every problem at once. The
core never sees a ``DictConfig``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import yaml

from fedpriv import compatibility
from fedpriv.adversary import ADVERSARIES, AdversarySpec, NoAdversary
from fedpriv.crypto import CRYPTO, CryptoSpec, NoCrypto
from fedpriv.data.datasets import DATASETS, DatasetSpec
from fedpriv.data.federated import FederatedData, federate
from fedpriv.data.partition import PARTITIONS, PartitionSpec
from fedpriv.errors import ConfigError
from fedpriv.families import FAMILIES, StrategySpec
from fedpriv.models import MODELS, ModelSpec
from fedpriv.privacy import PRIVACY, NoPrivacy, PrivacySpec
from fedpriv.registry import Registry, Spec, build
from fedpriv.selection import SELECTIONS, SelectionSpec, Uniform
from fedpriv.telemetry.settings import TelemetryConfig
from fedpriv.trackers import LOGGERS, LoggerSpec, NoLogger
from fedpriv.training import TrainConfig

#: Python package holding the Hydra config tree (the repo's ``conf/``).
CONFIG_MODULE = "fedpriv.conf"


@dataclasses.dataclass(frozen=True)
class EngineSpec(Spec):
    """Where a run executes (``engine=<name>``), and the timeouts every engine shares."""

    #: True when keys come from files (``fedpriv keys init``), not made per run.
    keys_provisioned: ClassVar[bool] = False
    #: True when the nodes are real devices (what :mod:`fedpriv.compatibility` calls fleet).
    fleet: ClassVar[bool] = False

    #: Seconds to wait for replies in one round before going on without the missing.
    round_timeout_s: float = 600.0
    #: Seconds to wait for the expected nodes to register before round 1.
    node_wait_s: float = 120.0
    #: Show Flower's own logs.
    verbose: bool = False
    #: torch threads inside each client; None: torch's default (all its cores).
    torch_threads: int | None = 1
    #: A reply with a payload over this many MB is rejected before anything reads it.
    max_reply_mb: float = 512.0

    def client_cpus(self) -> int:
        """Cores one client may use (crypto worker processes, torch threads)."""
        return os.cpu_count() or 1

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not self.round_timeout_s > 0:
            out.append(("round_timeout_s", "must be > 0"))
        if not self.node_wait_s > 0:
            out.append(("node_wait_s", "must be > 0"))
        if self.torch_threads is not None and self.torch_threads < 1:
            out.append(("torch_threads", "must be >= 1 or null (torch's default)"))
        if not self.max_reply_mb > 0:
            out.append(("max_reply_mb", "must be > 0"))
        return out


ENGINES: Registry[EngineSpec] = Registry("engine")


@ENGINES.register("simulation")
@dataclasses.dataclass(frozen=True)
class SimulationEngine(EngineSpec):
    """Flower's Ray-backed simulation engine on this machine."""

    #: CPUs Ray may use; None: all cores of this machine.
    num_cpus: int | None = None
    #: CPUs reserved per ClientApp actor; actors = num_cpus / cpus_per_client.
    cpus_per_client: float = 1.0
    #: A running Ray cluster to attach to (``host:port`` of its head, as ``ray start
    #: --head`` prints it); None: start Ray on this machine. Actors then go to every
    #: node of the cluster (docs/configuration.md, "More clients than one machine").
    ray_address: str | None = None

    def client_cpus(self) -> int:
        return max(1, int(self.cpus_per_client))

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.num_cpus is not None and self.num_cpus < 1:
            out.append(("num_cpus", "must be >= 1 or null (all cores)"))
        if not self.cpus_per_client > 0:
            out.append(("cpus_per_client", "must be > 0"))
        if self.ray_address is not None:
            if self.num_cpus is not None:
                out.append(("num_cpus", "must be null with ray_address (the cluster's nodes "
                            "declare their CPUs: ray start --num-cpus)"))  # fmt: skip
            if not _RAY_ADDRESS.fullmatch(self.ray_address):
                out.append(("ray_address", "must be host:port of a Ray head node "
                            "(e.g. 10.0.0.5:6379), or null to start Ray here"))  # fmt: skip
        return out


#: ``host:port`` (a name, IPv4, or [IPv6]) of a Ray cluster's head node.
_RAY_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}")


@ENGINES.register("inprocess")
@dataclasses.dataclass(frozen=True)
class InProcessEngine(EngineSpec):
    """The same ServerApp and ClientApp in this one process, nodes one at a time, no Ray
    (``fedpriv/runtime/inprocess.py``): for tests and quick iterations."""

    torch_threads: int | None = None  # one node works at a time: all cores


@ENGINES.register("deployment")
@dataclasses.dataclass(frozen=True)
class DeploymentEngine(EngineSpec):
    """A running SuperLink and SuperNodes on real devices (docs/deployment.md).

    ``fedpriv run`` submits the run to the SuperLink at ``address`` and waits; the
    ServerApp runs on the SuperLink's host and writes the results directory there.
    """

    keys_provisioned: ClassVar[bool] = True
    fleet: ClassVar[bool] = True

    #: The SuperLink, ``host:port`` (``fedpriv superlink`` listens on 9093).
    address: str = "127.0.0.1:9093"
    #: The fleet CA (``fedpriv keys init``) the SuperLink's certificate is checked with.
    root_certificates: str | None = "keys/ca.crt"
    #: No TLS: only for a SuperLink started with ``--insecure`` on a trusted network.
    insecure: bool = False
    #: The server's bundle of ``fedpriv keys init`` (``keys/superlink``), where the
    #: ServerApp reads the relay's half of ``family=swarm``'s consensus key.
    keys_dir: str | None = None
    torch_threads: int | None = None  # a device's own cores
    node_wait_s: float = 300.0  # devices join over the network

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit():
            out.append(("address", "must be host:port, e.g. server.local:9093"))
        if not self.insecure and not self.root_certificates:
            out.append(
                ("root_certificates", "must name the fleet CA (keys/ca.crt) unless insecure=true")
            )
        return out


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: data × partition × model × strategy × privacy × crypto × engine."""

    data: DatasetSpec
    partition: PartitionSpec
    model: ModelSpec
    strategy: StrategySpec
    family: str = "horizontal"
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    telemetry: TelemetryConfig = dataclasses.field(default_factory=TelemetryConfig)
    selection: SelectionSpec = dataclasses.field(default_factory=Uniform)
    adversary: AdversarySpec = dataclasses.field(default_factory=NoAdversary)
    #: The experiment tracker each round's scalars also go to (docs/trackers.md).
    logger: LoggerSpec = dataclasses.field(default_factory=NoLogger)
    engine: EngineSpec = SimulationEngine()
    privacy: PrivacySpec = dataclasses.field(default_factory=NoPrivacy)
    crypto: CryptoSpec = dataclasses.field(default_factory=NoCrypto)
    num_clients: int = 10
    rounds: int = 10
    #: Wall-clock seconds of training after which the run stops (None: no limit).
    time_budget_s: float | None = None
    #: The run fails after this many rounds in a row without an accepted update (0: never).
    max_idle_rounds: int = 3
    seed: int = 0
    #: An attack to audit the run with when it ends (``audit.json``; docs/audit.md).
    attack: str = "none"
    #: Write ``checkpoint.npz`` every this many rounds (0: never); resumable families only.
    checkpoint_every: int = 1
    #: Results directory; None: ``outputs/<date>/<time>-<strategy>``.
    output_dir: str | None = None
    #: Replace a previous run's results in ``output_dir`` (deleting its files first);
    #: False: refuse a directory that holds them. Not recorded in config.yaml unless set.
    overwrite: bool = False
    #: The family's own settings (``vertical.*``, ``swarm.*``: the family's
    #: ``settings_key``); None for a family without any.
    family_settings: Spec | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what ``config.yaml`` holds); :func:`from_mapping` reads it back."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "family_settings":
                if value is not None:
                    out[FAMILIES.get(self.family).settings_key] = value.to_dict()
                continue
            if field.name == "overwrite" and not value:
                continue  # how a run started, not what it computes: reports group by the rest
            out[field.name] = value.to_dict() if isinstance(value, Spec) else value
        out["family"] = {"name": self.family}
        return out

    def federated_data(self) -> FederatedData:
        """The dataset split into this run's partitions (cached: every caller in a
        process shares one copy)."""
        return federate(self.data, self.partition, self.num_clients, self.seed)

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with some top-level fields changed (the original is never mutated),
        validated as the command line validates: ``replace(rounds=0)`` is a
        :class:`ConfigError`, as ``rounds=0`` is."""
        return from_mapping(dataclasses.replace(self, **changes).to_dict())


def strategy_registry(family: str) -> Registry[Any]:
    """The strategies of one family."""
    return FAMILIES.get(family).strategies


_GROUPS: dict[str, Registry[Any]] = {
    "data": DATASETS,
    "partition": PARTITIONS,
    "model": MODELS,
    "engine": ENGINES,
    "privacy": PRIVACY,
    "crypto": CRYPTO,
}
#: Groups a config may leave out (older results directories, plain mappings).
_OPTIONAL_GROUPS: dict[str, tuple[Registry[Any], str]] = {
    "selection": (SELECTIONS, "uniform"),
    "adversary": (ADVERSARIES, "none"),
    "logger": (LOGGERS, "none"),
}
_PLAIN: dict[str, type[Spec]] = {
    "train": TrainConfig,
    "telemetry": TelemetryConfig,
}
#: What ``attack=`` may name: the attacks of :mod:`fedpriv.attacks.runs`.
ATTACKS = ("none", "membership", "gradient_inversion", "label_inference")
_SCALARS = {
    "attack": str,
    "num_clients": int,
    "rounds": int,
    "time_budget_s": float | None,
    "max_idle_rounds": int,
    "seed": int,
    "checkpoint_every": int,
    "output_dir": str | None,
    "overwrite": bool,
}
# Hydra bookkeeping and the run's mode (resume=DIR), not experiment settings.
_IGNORED = {"experiment", "hydra", "resume"}


def known_keys() -> set[str]:
    """The config's top-level keys: groups, settings, families' sections, Hydra's own."""
    return {
        *_GROUPS,
        *_OPTIONAL_GROUPS,
        *_PLAIN,
        *_SCALARS,
        "strategy",
        "family",
        *(FAMILIES.get(name).settings_key for name in FAMILIES),
        *_IGNORED,
    } - {""}


def check_override_keys(overrides: Sequence[str]) -> None:
    """A misspelt top-level key (``straegy=fedavg``) is a :class:`ConfigError` that names
    the key meant; Hydra would only offer to add it as a new one (``+straegy=``).
    Additions (``+key=``) and command-line flags are left to Hydra."""
    known = known_keys()
    choices = sorted(known - _IGNORED)
    problems = []
    for override in overrides:
        if override.startswith(("+", "-")) or "=" not in override:
            continue
        key = re.split(r"[./@]", override.split("=", 1)[0].lstrip("~"), maxsplit=1)[0]
        if key in known:
            continue
        close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
        hint = f"did you mean {override.replace(key, close[0], 1)!r}? " if close else ""
        problems.append(
            f"unknown config key {key!r} in {override!r}: {hint}known keys: {', '.join(choices)}"
        )
    if problems:
        raise ConfigError(problems)


def from_mapping(mapping: Mapping[str, Any]) -> ExperimentConfig:
    """Validate a nested mapping into an :class:`ExperimentConfig`.

    Every problem is collected and raised together as one :class:`ConfigError`.
    """
    problems: list[str] = []
    values: dict[str, Any] = {}

    def attempt(key: str, make: Any) -> None:
        try:
            values[key] = make()
        except ConfigError as error:
            problems.extend(error.problems)

    known = known_keys()
    for key in mapping:
        if key not in known:
            problems.append(
                f"unknown config key {key!r}; known keys: {', '.join(sorted(known - _IGNORED))}"
            )

    for key, registry in _GROUPS.items():
        attempt(
            key,
            lambda key=key, registry=registry: registry.create(
                _group(mapping, key, required=True), key
            ),
        )
    for key, (registry, default) in _OPTIONAL_GROUPS.items():
        attempt(
            key,
            lambda key=key, registry=registry, default=default: registry.create(
                _group(mapping, key) or {"name": default}, key
            ),
        )
    for key, cls in _PLAIN.items():
        attempt(key, lambda key=key, cls=cls: build(cls, _group(mapping, key), key))
    for key, tp in _SCALARS.items():
        if key in mapping:
            attempt(key, lambda key=key, tp=tp: _scalar(mapping[key], tp, key))

    family = _group(mapping, "family").get("name", "horizontal")
    if family not in FAMILIES:
        problems.append(FAMILIES.unknown(family, "family"))
    elif outdated := FAMILIES.get(family).outdated(mapping):
        problems += outdated  # the keys that moved; building on them would only add noise
    else:
        values["family"] = family
        attempt(
            "strategy",
            lambda: strategy_registry(family).create(
                _group(mapping, "strategy", required=True), "strategy"
            ),
        )
        chosen = FAMILIES.get(family)
        if chosen.settings is not None:
            key, settings = chosen.settings_key, chosen.settings
            attempt("family_settings", lambda: build(settings, _group(mapping, key), key))
            parties = getattr(values.get("family_settings"), "parties", None)
            if "num_clients" not in mapping and parties is not None:
                values["num_clients"] = parties
        for other in FAMILIES:
            key = FAMILIES.get(other).settings_key
            if key and key != chosen.settings_key and mapping.get(key) is not None:
                problems.append(f"{key}.* settings apply to family={other}, not family={family}")

    num_clients = values.get("num_clients", ExperimentConfig.num_clients)
    if isinstance(num_clients, int) and num_clients < 1:
        problems.append(f"num_clients={num_clients} must be >= 1")
    rounds = values.get("rounds", ExperimentConfig.rounds)
    if isinstance(rounds, int) and rounds < 1:
        problems.append(f"rounds={rounds} must be >= 1")
    budget = values.get("time_budget_s")
    if budget is not None and not budget > 0:
        problems.append(f"time_budget_s={budget} must be > 0 seconds, or null (no limit)")
    idle = values.get("max_idle_rounds", ExperimentConfig.max_idle_rounds)
    if isinstance(idle, int) and idle < 0:
        problems.append(f"max_idle_rounds={idle} must be >= 0 (0: never stop for idle rounds)")
    attack = values.get("attack", ExperimentConfig.attack)
    if attack not in ATTACKS:
        problems.append(f"attack={attack!r} is unknown; choose one of: {', '.join(ATTACKS)}")
    every = values.get("checkpoint_every", ExperimentConfig.checkpoint_every)
    if isinstance(every, int) and every < 0:
        problems.append(f"checkpoint_every={every} must be >= 0 (0: no checkpoints)")
    if "strategy" in values and isinstance(num_clients, int) and num_clients >= 1:
        problems += [
            f"strategy.{field}={getattr(values['strategy'], field)!r} {rule}"
            for field, rule in values["strategy"].problems_for(num_clients)
        ]
    if problems:
        raise ConfigError(problems)
    config = ExperimentConfig(**values)
    family_spec = FAMILIES.get(family)
    problems = compatibility.problems(config, family_spec) + family_spec.config_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def run_config(run_dir: Path) -> ExperimentConfig:
    """The validated config a run directory was made with (its ``config.yaml``)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a fedpriv run directory (no config.yaml)")
    return from_mapping(yaml.safe_load(path.read_text()))


def _group(mapping: Mapping[str, Any], key: str, *, required: bool = False) -> dict[str, Any]:
    value = mapping.get(key)
    if value is None:
        if required:
            raise ConfigError(f"config group {key!r} is missing; set {key}=<name>")
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}={value!r} must be a config group (a mapping), e.g. {key}=<name>")
    return dict(value)


def _scalar(value: Any, tp: Any, key: str) -> Any:
    from fedpriv.registry import coerce

    try:
        return coerce(value, tp)
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", None) or str(tp)  # bool, int, float | None...
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {name}") from None


def load_config(overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Compose ``conf/config.yaml`` with Hydra override strings and validate it.

    ``load_config(overrides=["strategy=fedprox", "rounds=5"])`` gives the same config as
    ``python -m fedpriv.experiments.run strategy=fedprox rounds=5``.
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    check_override_keys(overrides)
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            composed = compose(config_name="config", overrides=list(overrides))
    except HydraException as error:
        raise ConfigError(f"cannot compose the config: {error}") from error
    return from_mapping(plain_mapping(composed))


def check_command_line(args: Sequence[str]) -> None:
    """Compose and validate what ``fedpriv run ARGS`` would run, before Hydra starts, so
    that a bad key, option or value is a :class:`ConfigError` (one exit code) rather than
    Hydra's exit 1 after its own message. Each value of a sweep (``seed=0,1,2``) is
    checked with the others at their first value; search spaces that only a sweeper can
    expand (``interval(...)``) are left to it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    # Deletions (``~data.limit``) have no "=", but change what the others compose to.
    overrides = [
        arg for arg in args if ("=" in arg or arg.startswith("~")) and not arg.startswith("-")
    ]
    check_override_keys(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise ConfigError(f"cannot read the overrides: {error}") from None
    choices: list[list[str]] = []
    for override, text in zip(parsed, overrides, strict=True):
        if not override.is_sweep_override():
            choices.append([text])
            continue
        try:
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        except HydraException:
            continue
    first = [values[0] for values in choices]
    load_config(first)
    for position, values in enumerate(choices):
        for value in values[1:]:
            load_config([*first[:position], value, *first[position + 1 :]])


def plain_mapping(composed: Any) -> dict[str, Any]:
    """A composed Hydra config as plain values, interpolations resolved; a value the
    config leaves for the user to set (``???``, e.g. ``data.path`` of ``data=csv``) is a
    :class:`ConfigError` naming it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        return OmegaConf.to_container(composed, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as error:
        key = getattr(error, "full_key", None) or "a value"
        raise ConfigError(f"{key} is required: set {key}=<value>") from None
