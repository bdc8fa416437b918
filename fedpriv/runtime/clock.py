"""The run's clock: training time so far (a resumed run continues its count), the
``time_budget_s`` check, and each round's own seconds."""

from __future__ import annotations

import time


class RunClock:
    """Seconds of training, counted from :meth:`start`, and of the current round."""

    def __init__(self, budget_s: float | None, resumed_elapsed: float = 0.0) -> None:
        self.budget_s = budget_s
        self.resumed_elapsed = resumed_elapsed
        self.started = time.perf_counter()  # start() sets it when training starts
        self.round_started = self.started

    def start(self) -> None:
        """Training starts now (after the nodes' start-up): ``elapsed`` and the time
        budget count from here, continuing a resumed run's count."""
        self.started = time.perf_counter() - self.resumed_elapsed

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def new_round(self) -> None:
        self.round_started = time.perf_counter()

    def round_seconds(self) -> float:
        return time.perf_counter() - self.round_started

    def budget_reason(self) -> str | None:
        """Why the run must stop for ``time_budget_s``, or None while time is left."""
        if self.budget_s is None or self.elapsed() < self.budget_s:
            return None
        return f"time_budget_s={self.budget_s:g} reached after {self.elapsed():.1f} s of training"
