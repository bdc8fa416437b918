"""``run(config) -> Result``: the one entry every front end calls (Hydra, CLI, Python)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp

from fedpriv.config import (
    DeploymentEngine,
    ExperimentConfig,
    InProcessEngine,
    SimulationEngine,
    from_mapping,
    run_config,
)
from fedpriv.crypto import parallel
from fedpriv.errors import ConfigError, RunFailed, RunInterrupted, SimulationError
from fedpriv.logs import setup_logging
from fedpriv.results import Result, RunDirectory
from fedpriv.run_lock import check_free
from fedpriv.runtime import interrupt, warm_ray
from fedpriv.runtime.apps import build_client_app, build_server_app
from fedpriv.runtime.checkpoint import Checkpoint
from fedpriv.runtime.inprocess import run_inprocess
from fedpriv.runtime.runs import OpenRun, open_run
from fedpriv.runtime.simulation import simulate

log = logging.getLogger("fedpriv")

#: Engines that run here, in this process or on its Ray, and can resume a run.
LOCAL_ENGINES = (SimulationEngine, InProcessEngine)


def run(
    config: ExperimentConfig | Mapping[str, Any], *, client_app: ClientApp | None = None
) -> Result:
    """Run one experiment to completion and return its :class:`~fedpriv.results.Result`.

    Everything that can be checked before the engine starts is checked first (config
    values, the dataset, the partition, the model on the data's shape), so a bad
    setting fails in a second, not after Ray has started. ``engine=deployment``
    submits the run to a SuperLink and waits for it (docs/deployment.md).

    The run holds its results directory for its life: a directory another run is
    writing is refused at once, one holding a previous run's results unless
    ``overwrite=true`` (docs/results.md).

    A run that could not train (no client's update accepted, a failed party) raises
    :class:`~fedpriv.errors.RunFailed` once its results directory is complete; the
    exception's ``result`` holds it (``result.summary["stop_reason"]`` says why).

    ``client_app``: your own Flower ``ClientApp`` on every node instead of fedpriv's
    (``family=horizontal``, simulated engines, no ``crypto``): the message contract it
    must meet is docs/interop.md.
    """
    if not isinstance(config, ExperimentConfig):
        config = from_mapping(config)
    if client_app is not None:
        check_own_client_app(config)
    setup_logging()
    if isinstance(config.engine, DeploymentEngine):
        from fedpriv.deployment.submit import submit

        if config.output_dir:  # the ServerApp claims it; fail here, not on the fleet
            check_free(config.output_dir, overwrite=config.overwrite)
        return succeeded(submit(config))
    return succeeded(_simulate(config, checkpoint=None, client_app=client_app))


def check_own_client_app(config: ExperimentConfig) -> None:
    """What a run with the caller's ClientApp cannot do, refused before it starts."""
    problems = []
    if config.family != "horizontal":
        problems.append(f"family={config.family}: client_app= runs with family=horizontal")
    if not isinstance(config.engine, LOCAL_ENGINES):
        problems.append(
            f"engine={config.engine.name}: client_app= runs in simulation; on a fleet, "
            "start your ClientApp on the SuperNodes (docs/interop.md)"
        )
    if config.crypto.name != "none":
        problems.append(
            f"crypto={config.crypto.name}: the clients' key lives in fedpriv's ClientApp "
            "mods, which your ClientApp does not have"
        )
    if problems:
        raise ConfigError(problems)


def resume(run_dir: str | os.PathLike[str]) -> Result:
    """Continue an interrupted run in its own results directory, from its latest
    checkpoint (from round 1 if it wrote none); a finished run is returned as it is.

    The run's ``config.yaml`` is the config: a resumed run is the same experiment.
    """
    path = Path(run_dir)
    if (path / "summary.json").is_file():
        log.info("%s already finished; nothing to resume", path)
        return succeeded(Result.load(path))
    config = run_config(path).replace(output_dir=str(path.resolve()))
    setup_logging()
    if isinstance(config.engine, DeploymentEngine):  # the fleet's ServerApp reads the checkpoint
        from fedpriv.deployment.submit import submit

        return succeeded(submit(config, resume=True))
    checkpoint = Checkpoint.load(path)
    if checkpoint is None:
        log.warning("%s has no checkpoint: running it again from round 1", path)
    return succeeded(_simulate(config, checkpoint, resuming=True))


def succeeded(result: Result) -> Result:
    """``result``, unless the run failed: then :class:`RunFailed` carrying it."""
    if result.failed:
        raise RunFailed(result)
    return result


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


def _simulate(
    config: ExperimentConfig,
    checkpoint: Checkpoint | None,
    *,
    resuming: bool = False,
    client_app: ClientApp | None = None,
) -> Result:
    """Run (or continue from ``checkpoint``) on Flower's simulation engine, and audit it;
    the results directory stays locked (and the tracker open) until the audit is written."""
    assert isinstance(config.engine, LOCAL_ENGINES)
    started = time.perf_counter()
    with open_run(config, checkpoint, resuming=resuming) as opened:
        try:
            with interrupt.stop_on_ctrl_c():
                result = _simulate_opened(opened, started, client_app)
            return audited(result, config)
        except KeyboardInterrupt:  # the second Ctrl-C: stopped at once, mid-round
            raise RunInterrupted(opened.out.path, resumable=opened.strategy.can_resume) from None


def _simulate_opened(
    opened: OpenRun, started: float, client_app: ClientApp | None = None
) -> Result:
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
    if client_app is None:
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
    if finished["ctx"].interrupted:  # left unfinished (no summary.json): resume continues
        warm_ray.shutdown()  # Ctrl-C: stop Ray and its actors too, not only the run
        rounds = len(finished["history"])
        raise RunInterrupted(opened.out.path, rounds, resumable=opened.strategy.can_resume)
    return opened.finish(finished["history"], finished["ctx"], time.perf_counter() - started)
