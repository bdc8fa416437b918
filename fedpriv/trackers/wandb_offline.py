"""``logger=wandb``: a Weights & Biases run, offline, in ``<results dir>/wandb/``.

Always ``mode="offline"``: no network, no login prompt, no API key. W&B's ``wandb-core``
process writes the run's ``.wandb`` log; upload it later with ``wandb sync
<results dir>/wandb/offline-run-*``, read it here with ``wandb leet inspect``. W&B's own
console capture, git and code snapshots and system-metrics sampling are off: fedpriv's
log and device telemetry already hold those, and the sampler probes cloud metadata
addresses.

The run's name is its results directory's, its group the directory holding it (one group
per sweep), its project ``logger.project``; the config is the run's config (nested, as
W&B shows it), a tag names the fedpriv version and the notes the results directory.
``wandb.init(reinit="create_new")`` keeps it apart from any run the caller has open. It
finishes with exit code 0 (completed or stopped), 1 (failed) or 130 (interrupted),
fedpriv's own exit codes. A resumed run continues the W&B run of the latest offline run
in its directory (``wandb sync`` joins them in order).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedpriv.trackers.base import LOGGERS, LoggerSpec, TrackedRun, Tracker

#: W&B makes this directory in the results directory.
WANDB_DIR = "wandb"
#: The exit code each way a run ends is finished with.
EXIT_CODES = {"completed": 0, "stopped": 0, "failed": 1, "interrupted": 130}
#: ``offline-run-<date>_<time>-<run id>``: W&B's name for an offline run's directory.
OFFLINE_RUN = re.compile(r"offline-run-\d{8}_\d{6}-(?P<id>[a-z0-9]+)$")


@LOGGERS.register("wandb")
@dataclasses.dataclass(frozen=True)
class WandbLogger(LoggerSpec):
    """An offline W&B run in ``<results dir>/wandb/`` (``fedpriv[trackers]``)."""

    modules = ("wandb",)

    #: The W&B project the run syncs to.
    project: str = "fedpriv"
    #: The run's name; None: ``<parent>/<results dir>``.
    run_name: str | None = None
    #: The run's group; None: the directory holding the results directory (a sweep's).
    group: str | None = None

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not self.project.strip():
            out.append(("project", "must be a non-empty W&B project name"))
        for field in ("run_name", "group"):
            value = getattr(self, field)
            if value is not None and not value.strip():
                out.append((field, "must be non-empty or null (from the results directory)"))
        return out

    def open(self, run: TrackedRun) -> Tracker:
        import wandb

        previous = latest_offline_run(run.directory / WANDB_DIR) if run.resuming else None
        settings = wandb.Settings(
            silent=True,
            console="off",
            disable_git=True,
            save_code=False,
            x_disable_stats=True,
            x_disable_machine_info=True,
            x_save_requirements=False,
        )
        wandb_run = wandb.init(
            mode="offline",
            dir=str(run.directory),
            project=self.project,
            name=self.run_name or run.name,
            group=self.group or run.group,
            tags=[f"fedpriv-{run.tags['fedpriv.version']}"],
            config=dict(run.config),
            notes=f"fedpriv results: {run.tags['fedpriv.run_dir']}",
            id=previous,
            resume="allow" if previous else None,
            reinit="create_new",
            settings=settings,
        )
        return WandbTracker(wandb_run)


def latest_offline_run(directory: Path) -> str | None:
    """The run id of the newest offline run W&B wrote in ``directory``, if any."""
    runs = sorted(p.name for p in directory.glob("offline-run-*") if OFFLINE_RUN.match(p.name))
    match = OFFLINE_RUN.match(runs[-1]) if runs else None
    return match.group("id") if match else None


class WandbTracker(Tracker):
    """Logs each round as one ``run.log`` at step = round."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def log_round(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=EXIT_CODES[status])
