"""Flower's simulation engine (Ray): every call into Flower's launch API lives here."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedpriv.config import SimulationEngine
from fedpriv.runtime.engine_partitions import recording_partitions
from fedpriv.runtime.flower_wakeup import wake_on_store
from fedpriv.runtime.linkstate_index import indexed_linkstate
from fedpriv.runtime.warm_ray import warm_backend

#: Set before Flower starts: no runtime `uv sync`, and quiet Ray accelerator warnings.
ENVIRONMENT = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
}


def backend_config(engine: SimulationEngine) -> dict[str, object]:
    """Ray settings: the real core count, and ``cpus_per_client`` per ClientApp actor
    (Ray then sets one OpenMP/torch thread per actor when it is 1). With
    ``engine.ray_address`` Ray is not started here: the run attaches to that cluster,
    whose nodes declared their own CPUs, and its actors spread over them."""
    logging_args = {
        "logging_level": "INFO" if engine.verbose else "ERROR",
        "log_to_driver": engine.verbose,
    }
    if engine.ray_address is not None:
        init_args: dict[str, object] = {"address": engine.ray_address, **logging_args}
    else:
        num_cpus = engine.num_cpus or os.cpu_count() or 1
        init_args = {"num_cpus": num_cpus, "num_gpus": 0, "include_dashboard": False}
        init_args.update(logging_args)
    return {
        "client_resources": {"num_cpus": engine.cpus_per_client, "num_gpus": 0.0},
        "init_args": init_args,
    }


class _DropNotices(logging.Filter):
    """Hide Flower's notice that ``run_simulation`` is deprecated (fedpriv keeps that call
    here, in one place, and tracks Flower's launch API: docs/design/decisions.md) and
    FedAvg's note that federated evaluation is skipped (the server evaluates)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "DEPRECATED FEATURE" not in message and "will be skipped" not in message


@contextlib.contextmanager
def quiet_flower(verbose: bool = False) -> Iterator[None]:
    """Flower's logger at WARNING and Python warnings off, unless ``verbose``."""
    logger = logging.getLogger("flwr")
    level = logger.level
    drop = _DropNotices()
    logger.addFilter(drop)
    if not verbose:
        logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(level)
            logger.removeFilter(drop)


def simulate(
    server_app: ServerApp, client_app: ClientApp, num_nodes: int, engine: SimulationEngine
) -> None:
    """Run the apps on Flower's simulation engine. Messages wake their receivers instead
    of being polled for (:mod:`fedpriv.runtime.flower_wakeup`). Ray and its actors stay
    up for the next run in this process (:mod:`fedpriv.runtime.warm_ray`); a run that
    fails or is stopped stops them, and so does the interpreter's exit. The engine's link
    state finds each node's messages by an index (:mod:`fedpriv.runtime.linkstate_index`),
    and the server can learn which node holds which partition without asking them all
    (:mod:`fedpriv.runtime.engine_partitions`)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # chatty at Flower's import
    from flwr.simulation import run_simulation

    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    config = backend_config(engine)
    with (
        wake_on_store(),
        warm_backend(config["init_args"]),  # type: ignore[arg-type]
        indexed_linkstate(),
        recording_partitions(),
        quiet_flower(engine.verbose),
    ):
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_nodes,
            backend_config=config,  # type: ignore[arg-type]
        )
