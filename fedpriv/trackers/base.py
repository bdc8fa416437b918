"""What every experiment tracker (``logger=<name>``) shares: its spec, the run it follows,
and the one interface the run calls.

A tracker is told about the run once, when the run opens (names, tags, the resolved
config as flat hyperparameters), then gets each finished round's scalars with the round
as the step, and is closed once with the run's outcome. The libraries (TensorBoard,
MLflow, W&B) are optional: each spec names the modules it needs, and a run that chose
one that is missing fails before it starts, naming the pip extra that brings it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from fedpriv._version import __version__
from fedpriv.errors import ConfigError
from fedpriv.registry import Registry, Spec

#: How a run ended, as a tracker is told: ``summary.json``'s ``status`` (completed,
#: stopped, failed), or interrupted (Ctrl-C; the run may be resumed).
STATUSES = ("completed", "stopped", "failed", "interrupted")
#: The pip extra that installs every tracker library.
EXTRA = "fedpriv[trackers]"

#: A hyperparameter value every tracker accepts.
Param = str | int | float | bool


@dataclasses.dataclass(frozen=True)
class TrackedRun:
    """The run a tracker follows, as it opens (or resumes)."""

    #: The run's results directory.
    directory: Path
    #: The resolved config (``config.yaml``), less the ``logger`` group itself.
    config: Mapping[str, Any]
    #: Rounds already recorded: a resumed run's, up to its checkpoint; empty otherwise.
    history: tuple[Mapping[str, Any], ...] = ()
    #: Whether the run continues an interrupted one in its own directory.
    resuming: bool = False

    @property
    def name(self) -> str:
        """``<parent>/<directory>``: ``2026-12-03/14-03-27-918273`` for a run, and
        ``14-03-27-918273/3`` for job 3 of a sweep."""
        path = self.directory.resolve()
        return f"{path.parent.name}/{path.name}" if path.parent.name else path.name

    @property
    def group(self) -> str:
        """The directory holding the run's: a sweep's directory groups its jobs."""
        return self.directory.resolve().parent.name

    @property
    def first_round(self) -> int:
        """The first round this run will record."""
        return int(self.history[-1]["round"]) + 1 if self.history else 1

    @property
    def tags(self) -> dict[str, str]:
        """Tags that say which fedpriv wrote the run, and where its results are."""
        return {
            "fedpriv.version": __version__,
            "fedpriv.run_dir": str(self.directory.resolve()),
            "fedpriv.group": self.group,
        }

    def params(self) -> dict[str, Param]:
        """The config as flat hyperparameters: nested keys joined by ``.``
        (``strategy.name``), lists and nulls as JSON text (``[1, 2]``, ``null``)."""
        return flat_params(self.config)


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Param]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; values no tracker takes as they are
    (lists, None) as JSON text."""
    out: dict[str, Param] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        elif isinstance(value, str | int | float | bool):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


class Tracker(ABC):
    """One run in a tracker: opened by :meth:`LoggerSpec.open` (which logs the params),
    fed a round at a time, closed once."""

    @abstractmethod
    def log_round(self, step: int, scalars: Mapping[str, float]) -> None:
        """Log one finished round's scalars (None values already left out) at ``step``."""

    @abstractmethod
    def close(self, status: str) -> None:
        """Flush and finish the run; ``status`` is one of :data:`STATUSES`."""


@dataclasses.dataclass(frozen=True)
class LoggerSpec(Spec):
    """Where each round's scalars go besides ``metrics.jsonl`` (``logger=<name>``)."""

    #: Modules the tracker imports (checked before a run starts).
    modules: ClassVar[tuple[str, ...]] = ()

    def required_modules(self) -> tuple[str, ...]:
        """Modules this tracker, as configured, needs installed."""
        return self.modules

    def check_installed(self) -> None:
        """Raise :class:`ConfigError` naming the pip extra when a module is missing."""
        for module in self.required_modules():
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise ConfigError(
                    f"logger={self.name} needs the {module!r} package, which is not "
                    f"installed ({error}); install it with: pip install '{EXTRA}', "
                    "or choose logger=csv (no extra package) or logger=none"
                ) from None

    def open(self, run: TrackedRun) -> Tracker | None:
        """Start (or, when ``run.resuming``, continue) the run in the tracker and log its
        params; None: nothing to track."""
        return None


LOGGERS: Registry[LoggerSpec] = Registry("logger")


@LOGGERS.register("none")
@dataclasses.dataclass(frozen=True)
class NoLogger(LoggerSpec):
    """No tracker: ``metrics.jsonl`` (and ``Result.to_dataframe``) hold every round."""
