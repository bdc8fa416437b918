"""``run(config) -> Result``: the one entry every front end calls (Hydra, CLI, Python)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fedpriv.config import (
    DeploymentEngine,
    ExperimentConfig,
    InProcessEngine,
    SimulationEngine,
    from_mapping,
)
from fedpriv.crypto import parallel
from fedpriv.errors import ConfigError, SimulationError
from fedpriv.provenance import provenance
from fedpriv.results import SCHEMA_VERSION, Result, RunDirectory
from fedpriv.run_lock import RunLock, check_free, claim
from fedpriv.runtime.apps import build_client_app, build_server_app
from fedpriv.runtime.checkpoint import Checkpoint
from fedpriv.runtime.context import RunContext
from fedpriv.runtime.inprocess import run_inprocess
from fedpriv.runtime.simulation import simulate
from fedpriv.strategies.base import Setup, Strategy

log = logging.getLogger("fedpriv")

#: Engines that run here, in this process or on its Ray, and can resume a run.
LOCAL_ENGINES = (SimulationEngine, InProcessEngine)


def run(config: ExperimentConfig | Mapping[str, Any]) -> Result:
    """Run one experiment to completion and return its :class:`~fedpriv.results.Result`.

    Everything that can be checked before the engine starts is checked first (config
    values, the dataset, the partition, the model on the data's shape), so a bad
    setting fails in a second, not after Ray has started. ``engine=deployment``
    submits the run to a SuperLink and waits for it (docs/deployment.md).

    The run holds its results directory for its life: a directory another run is
    writing is refused at once, one holding a previous run's results unless
    ``overwrite=true`` (docs/results.md).
    """
    if not isinstance(config, ExperimentConfig):
        config = from_mapping(config)
    setup_logging()
    if isinstance(config.engine, DeploymentEngine):
        from fedpriv.deployment.submit import submit

        if config.output_dir:  # the ServerApp claims it; fail here, not on the fleet
            check_free(config.output_dir, overwrite=config.overwrite)
        return submit(config)
    return _simulate(config, checkpoint=None)


def resume(run_dir: str | os.PathLike[str]) -> Result:
    """Continue an interrupted run in its own results directory, from its latest
    checkpoint (from round 1 if it wrote none); a finished run is returned as it is.

    The run's ``config.yaml`` is the config: a resumed run is the same experiment.
    """
    path = Path(run_dir)
    if (path / "summary.json").is_file():
        log.info("%s already finished; nothing to resume", path)
        return Result.load(path)
    config = run_config(path).replace(output_dir=str(path))
    if not isinstance(config.engine, LOCAL_ENGINES):
        raise ConfigError(
            f"resume={str(path)!r}: engine={config.engine.name} runs cannot be resumed yet; "
            "resume runs under engine=simulation or engine=inprocess"
        )
    checkpoint = Checkpoint.load(path)
    if checkpoint is None:
        log.warning("%s has no checkpoint: running it again from round 1", path)
    setup_logging()
    return _simulate(config, checkpoint, resuming=True)


def audited(result: Result, config: ExperimentConfig) -> Result:
    """With ``attack`` set, audit the finished run: ``audit.json``, and its result
    under ``audit`` in ``summary.json``."""
    if config.attack == "none":
        return result
    from fedpriv.attacks.runs import audit_run

    log.info("auditing the run: attack=%s", config.attack)
    summary = {**result.summary, "audit": {config.attack: audit_run(result.run_dir, config.attack)}}
    RunDirectory(result.run_dir).write_json("summary.json", summary)
    return Result(result.run_dir, result.history, summary)


def run_config(run_dir: Path) -> ExperimentConfig:
    """The validated config a run directory was made with (its ``config.yaml``)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a fedpriv run directory (no config.yaml)")
    return from_mapping(yaml.safe_load(path.read_text()))


def _simulate(
    config: ExperimentConfig, checkpoint: Checkpoint | None, *, resuming: bool = False
) -> Result:
    """Run (or continue from ``checkpoint``) on Flower's simulation engine, and audit it;
    the results directory stays locked until the audit is written."""
    assert isinstance(config.engine, LOCAL_ENGINES)
    started = time.perf_counter()
    opened = open_run(config, checkpoint, resuming=resuming)
    try:
        result = _simulate_opened(opened, started)
        return audited(result, config)
    finally:
        opened.close()


def _simulate_opened(opened: OpenRun, started: float) -> Result:
    """Run an opened run on Flower's simulation engine (or, with ``engine=inprocess``,
    in this process) to its ``summary.json``."""
    config = opened.config
    assert isinstance(config.engine, LOCAL_ENGINES)
    finished: dict[str, Any] = {}
    server_app = build_server_app(
        opened.strategy,
        make_context=opened.context,
        on_done=lambda history, ctx: finished.update(history=history, ctx=ctx),
        on_error=lambda error: finished.update(error=error),
    )
    client_app = build_client_app(opened.strategy, opened.setup.client_mods)
    try:
        if isinstance(config.engine, InProcessEngine):
            run_inprocess(server_app, client_app, config.num_clients, config.engine)
        else:
            simulate(server_app, client_app, config.num_clients, config.engine)
    finally:
        parallel.shutdown()  # crypto worker processes this run started here
    if "error" in finished:
        raise finished["error"]
    if "history" not in finished:
        raise SimulationError("the simulation ended before the ServerApp finished its rounds")
    return opened.finish(finished["history"], finished["ctx"], time.perf_counter() - started)


@dataclasses.dataclass
class OpenRun:
    """A prepared run: its strategy, what it prepared, and its results directory. The
    ServerApp of either engine makes its :class:`RunContext` and finishes through it."""

    config: ExperimentConfig
    strategy: Strategy
    setup: Setup
    out: RunDirectory
    checkpoint: Checkpoint | None = None
    #: Held on ``out`` until :meth:`close` (or until the process ends).
    lock: RunLock | None = None

    def context(self) -> RunContext:
        return RunContext(
            self.config,
            self.out,
            evaluate=self.setup.evaluate,
            initial_arrays=self.setup.initial_arrays,
            server_key=self.setup.server_key,
            checkpoint=self.checkpoint,
        )

    def finish(self, history: list[dict[str, Any]], ctx: RunContext, seconds: float) -> Result:
        """Write ``summary.json`` and return the finished run."""
        if self.checkpoint is not None:  # the seconds before the run was interrupted too
            seconds += self.checkpoint.elapsed
        summary = summarize(self.config, history, seconds, ctx.stop_reason)
        summary["privacy"] = ctx.ledger.summary()
        summary["crypto"] = self.config.crypto.summary(history)
        self.out.write_json("summary.json", summary)
        return Result(self.out.path, history, summary)

    def close(self) -> None:
        """Release the results directory for other runs."""
        if self.lock is not None:
            self.lock.release()


def open_run(
    config: ExperimentConfig, checkpoint: Checkpoint | None = None, *, resuming: bool = False
) -> OpenRun:
    """Lock the results directory (a new run: refusing a previous run's results unless
    ``config.overwrite``), prepare the family (data, model, keys) and start the directory
    (or, when ``resuming``, cut its metrics back to the checkpoint's rounds). The caller
    releases the lock with :meth:`OpenRun.close`."""
    from fedpriv.strategies import FAMILIES

    lock = claim(
        config.output_dir or default_output_dir(config),
        overwrite=config.overwrite,
        resuming=resuming,
    )
    try:
        strategy = FAMILIES.get(config.family).create(config)
        if checkpoint is not None and not strategy.resumable:
            raise ConfigError(f"family={config.family} runs cannot be resumed yet")
        setup = strategy.prepare()
    except BaseException:
        lock.release()
        raise
    out = RunDirectory(lock.directory)
    out.write_config(config.to_dict())
    out.write_json("clients.json", setup.clients)
    out.write_json("provenance.json", provenance())
    out.start_metrics(checkpoint.history if checkpoint else [])
    log.info(
        "fedpriv: %s/%s on %s, %d clients, %d rounds -> %s",
        config.family,
        config.strategy.name,
        config.data.name,
        config.num_clients,
        config.rounds,
        out.path,
    )
    return OpenRun(config, strategy, setup, out, checkpoint, lock)


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


def setup_logging() -> None:
    logger = logging.getLogger("fedpriv")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
