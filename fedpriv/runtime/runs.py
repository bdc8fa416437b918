"""Opening a run and finishing it, the same for every engine.

Both engines' ServerApps (simulation in :mod:`fedpriv.api`, a fleet's in
:mod:`fedpriv.deployment.apps`) open a run here: lock its results directory, prepare the
family (data, model, keys), write what the run starts from, open its experiment tracker;
and finish it here, with ``summary.json``, and close it: the tracker is told how the run
ended (also when it failed or Ctrl-C stopped it) and the directory is released.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpriv.compatibility import uses
from fedpriv.config import ExperimentConfig
from fedpriv.errors import ConfigError, RunInterrupted
from fedpriv.families import FAMILIES
from fedpriv.provenance import provenance
from fedpriv.results import SCHEMA_VERSION, Result, RunDirectory
from fedpriv.run_lock import RunLock, claim
from fedpriv.runtime.checkpoint import Checkpoint
from fedpriv.runtime.context import RunContext
from fedpriv.trackers import RunTracker, TrackedRun

if TYPE_CHECKING:  # the interface the families implement, one layer up
    from fedpriv.strategies.base import Setup, Strategy

log = logging.getLogger("fedpriv")


@dataclasses.dataclass
class OpenRun:
    """A prepared run: its strategy, what it prepared, its results directory and its
    tracker. The ServerApp of either engine makes its :class:`RunContext` and finishes
    through it; ``with opened:`` closes it however the block ends."""

    config: ExperimentConfig
    strategy: Strategy
    setup: Setup
    out: RunDirectory
    checkpoint: Checkpoint | None = None
    #: Held on ``out`` until :meth:`close` (or until the process ends).
    lock: RunLock | None = None
    #: The experiment tracker (``logger``), open until :meth:`close`.
    tracker: RunTracker = dataclasses.field(default_factory=RunTracker)
    #: ``summary.json``'s status once :meth:`finish` wrote it.
    status: str | None = None

    def context(self) -> RunContext:
        return RunContext(
            self.config,
            self.out,
            server_key=self.setup.server_key,
            checkpoint=self.checkpoint,
            tracker=self.tracker,
        )

    def finish(self, history: list[dict[str, Any]], ctx: RunContext, seconds: float) -> Result:
        """Write ``summary.json`` and return the finished run."""
        if self.checkpoint is not None:  # the seconds before the run was interrupted too
            seconds += self.checkpoint.elapsed
        summary = summarize(self.config, history, seconds, ctx.stop_reason, ctx.failure)
        summary["privacy"] = ctx.ledger.summary()
        summary["crypto"] = self.config.crypto.summary(history)
        self.out.write_json("summary.json", summary)
        self.status = summary["status"]
        return Result(self.out.path, history, summary)

    def close(self, error: BaseException | None = None) -> None:
        """Close the tracker with how the run ended (``error``: what stopped it, if it
        did not finish) and release the results directory for other runs."""
        interrupted = isinstance(error, KeyboardInterrupt | RunInterrupted)
        try:
            self.tracker.close(self.status or ("interrupted" if interrupted else "failed"))
        finally:
            if self.lock is not None:
                self.lock.release()

    def __enter__(self) -> OpenRun:
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        self.close(error)


def open_run(
    config: ExperimentConfig, checkpoint: Checkpoint | None = None, *, resuming: bool = False
) -> OpenRun:
    """Lock the results directory (a new run: refusing a previous run's results unless
    ``config.overwrite``), prepare the family (data, model, keys) and start the directory
    (or, when ``resuming``, cut its metrics back to the checkpoint's rounds), and open the
    tracker ``config.logger`` names (its library missing: a :class:`ConfigError` before
    anything is locked). The caller closes the run with :meth:`OpenRun.close`."""
    config.logger.check_installed()
    lock = claim(
        config.output_dir or default_output_dir(config),
        overwrite=config.overwrite,
        resuming=resuming,
    )
    try:
        strategy = FAMILIES.get(config.family).create(config)
        if checkpoint is not None:
            _check_resumable(config, strategy)
        setup = strategy.prepare()
        out = RunDirectory(lock.directory)
        out.write_config(config.to_dict())
        out.write_json("clients.json", setup.clients)
        out.write_json("provenance.json", provenance(config.data.source_files()))
        history = checkpoint.history if checkpoint else []
        out.start_metrics(history)
        log.info(
            "fedpriv: %s/%s on %s, %d clients, %d rounds -> %s",
            config.family,
            config.strategy.name,
            config.data.name,
            config.num_clients,
            config.rounds,
            out.path,
        )
        tracker = RunTracker.open(config.logger, tracked_run(config, out, history, resuming))
    except BaseException:
        lock.release()
        raise
    return OpenRun(config, strategy, setup, out, checkpoint, lock, tracker)


def tracked_run(
    config: ExperimentConfig,
    out: RunDirectory,
    history: list[dict[str, Any]],
    resuming: bool,
) -> TrackedRun:
    """What the run's tracker is told: the config it logs as params is ``config.yaml``
    less the ``logger`` group (where the run is tracked is no hyperparameter)."""
    params = {key: value for key, value in config.to_dict().items() if key != "logger"}
    return TrackedRun(out.path, params, tuple(history), resuming=resuming)


def _check_resumable(config: ExperimentConfig, strategy: Strategy) -> None:
    """Whether a checkpoint of this run can be continued, before anything starts."""
    if (refusal := strategy.resume_refusal()) is not None:
        raise ConfigError(refusal)
    if "generated_keys" in uses(config):
        raise ConfigError(
            f"crypto={config.crypto.name}: this run's keys were made in memory and ended "
            "with it, and its checkpoint's global model is encrypted under them, so it "
            "cannot be resumed. For a run that can resume, make keys with `fedpriv keys "
            "init` and set crypto.keys_dir=<that directory>"
        )


def summarize(
    config: ExperimentConfig,
    history: list[dict[str, Any]],
    seconds: float,
    stop_reason: str | None,
    failure: str | None = None,
) -> dict[str, Any]:
    """``summary.json``: the schema in docs/results.md."""
    last = history[-1] if history else {}
    if failure is None and history and all(r.get("contributors") == 0 for r in history):
        failure = stop_reason = (
            f"no client's update was accepted in any of the {len(history)} rounds"
        )
    status = "failed" if failure else "stopped" if stop_reason else "completed"
    return {
        "status": status,
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
