"""RunContext: what one run's server side holds, made of parts with one job each.

* :attr:`RunContext.exchange` -- messages to and from nodes: send, wait, screen, count
  bytes, reject (:mod:`.exchange`);
* :attr:`RunContext.reports` -- clients' reported ε and declines into the ledger
  (:mod:`.client_reports`);
* :attr:`RunContext.clock` -- training seconds and the time budget (:mod:`.clock`);
* :attr:`RunContext.recorder` -- where finished rounds go (:mod:`.rounds`);
* :attr:`RunContext.ledger` and :attr:`RunContext.spending` -- the privacy spent, as
  the server counts it and as each node reported it.

It starts and ends rounds across those parts; checkpoints and resuming are
:mod:`.resume`'s. Families use the parts; none re-implements them.
"""

from __future__ import annotations

import logging
from typing import Any

from fedpriv.config import ExperimentConfig
from fedpriv.privacy.ledger import ServerLedger
from fedpriv.results import RunDirectory
from fedpriv.runtime.checkpoint import SPENDING_FILE, Checkpoint
from fedpriv.runtime.client_reports import ClientReports
from fedpriv.runtime.clock import RunClock
from fedpriv.runtime.exchange import Exchange
from fedpriv.runtime.rounds import RoundRecorder, RoundReport
from fedpriv.runtime.spending import SpendingRecord
from fedpriv.telemetry import RoundPublisher
from fedpriv.trackers import RunTracker

__all__ = ["RoundReport", "RunContext"]

log = logging.getLogger("fedpriv")


class RunContext:
    """Shared server-side services for one run (one per ServerApp execution)."""

    def __init__(
        self,
        config: ExperimentConfig,
        out: RunDirectory,
        server_key: bytes | None = None,
        checkpoint: Checkpoint | None = None,
        tracker: RunTracker | None = None,
    ) -> None:
        self.config = config
        self.out = out
        #: The server's crypto context (parameters only: it cannot decrypt), if any.
        self.server_key = server_key
        #: The checkpoint this run resumes from (None: a fresh run).
        self.checkpoint = checkpoint
        self.stop_reason: str | None = None
        #: Why the run failed (it stops with this as its stop reason); None: it did not.
        self.failure: str | None = None
        #: Rounds in a row without an accepted update (``max_idle_rounds``).
        self.idle_rounds = 0
        #: Ctrl-C stopped the run before its last round (it is left to resume).
        self.interrupted = False
        self.ledger = ServerLedger(config)
        #: What each node spent, written as replies arrive (a resumed run continues it).
        self.spending = SpendingRecord(out.path / SPENDING_FILE, config.num_clients)
        history: list[dict[str, Any]] = []
        if checkpoint is not None:
            history = list(checkpoint.history)
            if checkpoint.ledger:
                self.ledger.restore(checkpoint.ledger)
            self.spending = SpendingRecord.load(self.spending.path, config.num_clients)
        self.exchange = Exchange(config, self.ledger, self.spending)
        self.reports = ClientReports(self.ledger, self.spending, self.exchange)
        self.clock = RunClock(config.time_budget_s, checkpoint.elapsed if checkpoint else 0.0)
        publisher = RoundPublisher(config.telemetry, out.path)
        self.recorder = RoundRecorder(config.rounds, out, publisher, history, tracker)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every finished round's record, a resumed run's earlier rounds first."""
        return self.recorder.history

    @property
    def first_round(self) -> int:
        """The round to run next: 1, or the one after the checkpoint's."""
        return 1 if self.checkpoint is None else self.checkpoint.round + 1

    def close(self) -> None:
        self.recorder.close()

    def start_round(self) -> None:
        self.clock.new_round()
        self.exchange.new_round()
        self.reports.new_round()

    def end_round(self, report: RoundReport) -> dict[str, Any]:
        """Record a finished round and decide whether the run stops after it: the
        family's stop reason, the privacy ledger's, or the time budget's."""
        for client in report.clients:
            if "partition-id" in client and "node_id" in client:
                self.reports.reported(int(client["node_id"]), client)
        record = self.recorder.record(
            report,
            traffic=self.exchange.traffic,
            seconds=self.clock.round_seconds(),
            elapsed=self.clock.elapsed(),
            rejected=self.exchange.rejected,
            declined=self.reports.declined,
            privacy=self.ledger.round_record(),
        )
        self.failure = report.failure or self.idle_failure(report)
        self.stop_reason = (
            self.failure
            or report.stop_reason
            or self.ledger.stop_reason()
            or self.clock.budget_reason()
        )
        if self.stop_reason:
            log.warning("stopping after round %d: %s", report.server_round, self.stop_reason)
        return record

    def idle_failure(self, report: RoundReport) -> str | None:
        """Why the run fails for ``max_idle_rounds`` rounds in a row in which no
        client's update was accepted; None while it may go on."""
        if report.contributors != 0:
            self.idle_rounds = 0
            return None
        self.idle_rounds += 1
        reasons = sorted({r["reason"] for r in self.exchange.rejected})
        why = f"rejected: {'; '.join(reasons[:3])}" if reasons else "no reply was usable"
        log.warning("round %d: no client's update was accepted (%s)", report.server_round, why)
        limit = self.config.max_idle_rounds
        if not limit or self.idle_rounds < limit:
            return None
        return (
            f"no client's update was accepted in {self.idle_rounds} rounds in a row "
            f"(max_idle_rounds={limit}); last round {why}"
        )
