"""fedpriv's exceptions: one hierarchy rooted in builtins, so callers may catch either."""

from __future__ import annotations

from typing import Any


class FedprivError(Exception):
    """Base class of every error fedpriv raises on purpose."""


class ConfigError(FedprivError, ValueError):
    """A configuration is invalid. Holds every problem found, one line each.

    Each problem names the key, the value given and what is allowed, e.g.
    ``partition.alpha=-1 must be > 0``.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} configuration problems:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(message)


class DataError(FedprivError, FileNotFoundError):
    """A dataset could not be found or read; the message says where fedpriv looked."""


class SimulationError(FedprivError, RuntimeError):
    """The federated run did not complete."""


class RunInterrupted(FedprivError):
    """Ctrl-C stopped the run before its last round. Its results directory holds the
    rounds so far and, for a family that checkpoints, a checkpoint to resume from."""

    def __init__(self, run_dir: Any, rounds: int | None = None, resumable: bool = True) -> None:
        self.run_dir = run_dir
        done = "" if rounds is None else f" after round {rounds}"
        how = (
            f"resume with: python -m fedpriv.experiments.run resume={run_dir}"
            if resumable
            else f"its family cannot resume; the rounds so far are in {run_dir}"
        )
        super().__init__(f"interrupted{done}; {how}")


class RunFailed(FedprivError, RuntimeError):
    """The run ended without training what it set out to (no client's update was
    accepted, a party or too many peers failed). Its results directory is complete,
    ``summary.json`` says ``"status": "failed"`` and why; :attr:`result` holds it."""

    def __init__(self, result: Any) -> None:
        self.result = result
        super().__init__(f"the run in {result.run_dir} failed: {result.summary.get('stop_reason')}")
