"""``run(config) -> Result``: the one entry every front end calls (Hydra, CLI, Python)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

from fedpriv.config import ExperimentConfig, from_mapping
from fedpriv.crypto import parallel
from fedpriv.crypto.records import Layout
from fedpriv.data.federated import FederatedData, federate
from fedpriv.errors import ConfigError, SimulationError
from fedpriv.results import SCHEMA_VERSION, Result, RunDirectory
from fedpriv.runtime.apps import build_client_app, build_server_app
from fedpriv.runtime.context import RunContext
from fedpriv.runtime.simulation import simulate
from fedpriv.training import evaluate

log = logging.getLogger("fedpriv")


def run(config: ExperimentConfig | Mapping[str, Any]) -> Result:
    """Run one experiment to completion and return its :class:`~fedpriv.results.Result`.

    Everything that can be checked before the engine starts is checked first (config
    values, the dataset, the partition, the model on the data's shape), so a bad
    setting fails in a second, not after Ray has started.
    """
    if not isinstance(config, ExperimentConfig):
        config = from_mapping(config)
    _setup_logging()
    data = federate(config.data, config.partition, config.num_clients, config.seed)
    config.privacy.check_clients([len(p) for p in data.parts])
    initial = initial_arrays(config, data)
    # Keys are made here, on the clients' side of the simulation: the secret context
    # goes into the ClientApp's mods only; the ServerApp gets the public context.
    keys = config.crypto.make_keys()
    crypto_mods = config.crypto.client_mods(
        config, keys.secret if keys else None, Layout.of(initial)
    )
    from strategies import FAMILIES

    strategy = FAMILIES.get(config.family)(config)
    out = RunDirectory(config.output_dir or default_output_dir(config))
    out.write_config(config.to_dict())
    out.write_json(
        "clients.json",
        {
            "num_clients": config.num_clients,
            "num_examples": [len(p) for p in data.parts],
            "label_histograms": data.label_histograms(),
            "test_examples": len(data.dataset.y_test),
        },
    )
    out.start_metrics()
    finished: dict[str, Any] = {}
    server_app = build_server_app(
        strategy,
        make_context=lambda: RunContext(
            config,
            out,
            evaluate=lambda arrays: evaluate_arrays(config, data, arrays),
            initial_arrays=lambda: initial,
            server_key=keys.public if keys else None,
        ),
        on_done=lambda history, ctx: finished.update(history=history, ctx=ctx),
    )
    started = time.perf_counter()
    log.info(
        "fedpriv: %s/%s on %s, %d clients, %d rounds -> %s",
        config.family,
        config.strategy.name,
        config.data.name,
        config.num_clients,
        config.rounds,
        out.path,
    )
    client_app = build_client_app(strategy, crypto_mods)
    try:
        simulate(server_app, client_app, config.num_clients, config.engine)
    finally:
        parallel.shutdown()  # crypto worker processes this run started here
    if "history" not in finished:
        raise SimulationError("the simulation ended before the ServerApp finished its rounds")
    history: list[dict[str, Any]] = finished["history"]
    ctx: RunContext = finished["ctx"]
    summary = summarize(config, history, time.perf_counter() - started, ctx.stop_reason)
    summary["privacy"] = ctx.ledger.summary()
    summary["crypto"] = config.crypto.summary(history)
    out.write_json("summary.json", summary)
    return Result(out.path, history, summary)


def initial_arrays(config: ExperimentConfig, data: FederatedData) -> ArrayRecord:
    """The seeded initial global model; a model that does not fit the data is a ConfigError."""
    torch.manual_seed(config.seed)
    try:
        model = config.model.build(data.dataset.input_shape, data.dataset.num_classes)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    model = config.privacy.prepare_model(model)
    return ArrayRecord(model.state_dict())


def evaluate_arrays(
    config: ExperimentConfig, data: FederatedData, arrays: ArrayRecord
) -> dict[str, float]:
    """Accuracy and loss of a global model on the held-out test split."""
    model = config.privacy.prepare_model(
        config.model.build(data.dataset.input_shape, data.dataset.num_classes)
    )
    model.load_state_dict(arrays.to_torch_state_dict())
    return evaluate(model, data.dataset.x_test, data.dataset.y_test)


def summarize(
    config: ExperimentConfig, history: list[dict[str, Any]], seconds: float, stop_reason: str | None
) -> dict[str, Any]:
    """``summary.json``: the schema in docs/results.md."""
    last = history[-1] if history else {}
    return {
        "schema": SCHEMA_VERSION,
        "strategy": config.strategy.name,
        "family": config.family,
        "dataset": config.data.name,
        "partition": config.partition.name,
        "model": config.model.name,
        "num_clients": config.num_clients,
        "seed": config.seed,
        "rounds": len(history),
        "rounds_planned": config.rounds,
        "final": {"accuracy": last.get("accuracy"), "loss": last.get("loss")},
        "best_accuracy": max(
            (r["accuracy"] for r in history if r["accuracy"] is not None), default=None
        ),
        "bytes": {
            "up": sum(r["bytes_up"] for r in history),
            "down": sum(r["bytes_down"] for r in history),
        },
        "seconds": seconds,
        "seconds_first_round": history[0]["elapsed"] if history else None,
        "rejected_replies": sum(len(r["rejected"]) for r in history),
        "stop_reason": stop_reason,
        "privacy": None,
        "crypto": None,
    }


def default_output_dir(config: ExperimentConfig) -> Path:
    now = dt.datetime.now()
    return Path("outputs") / now.strftime("%Y-%m-%d") / f"{now:%H-%M-%S-%f}-{config.strategy.name}"


def _setup_logging() -> None:
    logger = logging.getLogger("fedpriv")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
