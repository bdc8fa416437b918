"""A run's tracker as the run uses it: round records in, scalars out, closed exactly once.

The run records each round from the ServerApp's thread and closes the tracker from the
thread that opened the run (also after a second Ctrl-C, while the ServerApp may still be
finishing a round), so both go through one lock, and a round that arrives after the close
is dropped. A tracker that fails mid-run (a full disk, an unreachable tracking server) is
logged and left behind; the run goes on: ``metrics.jsonl`` is its record, and it holds
every round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from fedpriv.results import round_row
from fedpriv.trackers.base import STATUSES, LoggerSpec, TrackedRun, Tracker

log = logging.getLogger("fedpriv")


def round_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """What a tracker logs of a round: ``Result.to_dataframe``'s row (accuracy, loss, ε,
    contributors, clients, rejected, bytes up and down, seconds, elapsed) less the round
    itself (the step) and the values the round does not have."""
    return {
        key: value
        for key, value in round_row(record).items()
        if key != "round" and value is not None
    }


class RunTracker:
    """The tracker a run's :class:`~fedpriv.trackers.LoggerSpec` opened (or none)."""

    def __init__(self, name: str = "none", tracker: Tracker | None = None) -> None:
        self.name = name
        self._tracker = tracker
        self._lock = threading.Lock()

    @classmethod
    def open(cls, spec: LoggerSpec, run: TrackedRun) -> RunTracker:
        """Open ``spec``'s tracker for ``run`` (its params logged)."""
        return cls(spec.name, spec.open(run))

    @property
    def active(self) -> bool:
        """Whether rounds still go to a tracker."""
        return self._tracker is not None

    def record(self, record: Mapping[str, Any]) -> None:
        """Log a finished round (one line of ``metrics.jsonl``) at step = its round."""
        with self._lock:
            if self._tracker is None:
                return
            try:
                self._tracker.log_round(int(record["round"]), round_scalars(record))
            except Exception as error:  # the run's own record is metrics.jsonl
                log.error(
                    "logger=%s failed at round %s (%s: %s); the run goes on without it, "
                    "metrics.jsonl holds every round",
                    self.name,
                    record["round"],
                    type(error).__name__,
                    error,
                )
                self._close("failed")

    def close(self, status: str) -> None:
        """Finish the tracker's run with the run's outcome; later calls do nothing."""
        if status not in STATUSES:
            raise ValueError(f"status={status!r}; choose one of: {', '.join(STATUSES)}")
        with self._lock:
            self._close(status)

    def _close(self, status: str) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return
        try:
            tracker.close(status)
        except Exception as error:
            log.error("logger=%s could not close (%s: %s)", self.name, type(error).__name__, error)
