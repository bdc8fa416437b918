"""A finished round, as the family reports it and as the run records it: one line of
``metrics.jsonl``, the history, the telemetry publisher, the experiment tracker, the
progress bar and the log."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from fedpriv.records import Traffic
from fedpriv.results import RunDirectory
from fedpriv.runtime import interrupt
from fedpriv.runtime.progress import Progress
from fedpriv.telemetry import RoundPublisher
from fedpriv.trackers import RunTracker

log = logging.getLogger("fedpriv")


@dataclasses.dataclass
class RoundReport:
    """What a family's round produced; the context adds bytes, seconds and rejections."""

    server_round: int
    accuracy: float | None = None
    loss: float | None = None
    clients: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Set to end the run after this round; the reason goes into the summary.
    stop_reason: str | None = None
    #: Set when the run cannot go on (a party failed, too few peers): the run ends
    #: after this round, failed, with this reason.
    failure: str | None = None
    #: Clients (parties, peers) whose work went into the model this round; 0: nothing
    #: was learned from anyone. None: the family does not count them.
    contributors: int | None = None


class RoundRecorder:
    """Where finished rounds go; ``history`` holds them all (a resumed run's too)."""

    def __init__(
        self,
        rounds: int,
        out: RunDirectory,
        publisher: RoundPublisher,
        history: list[dict[str, Any]],
        tracker: RunTracker | None = None,
    ) -> None:
        self.rounds = rounds
        self.out = out
        self.publisher = publisher
        self.history = history
        #: The run's experiment tracker (``logger``); the run closes it, not the recorder.
        self.tracker = tracker or RunTracker()
        self.progress = Progress(rounds, done=len(history))

    def record(
        self,
        report: RoundReport,
        *,
        traffic: Traffic,
        seconds: float,
        elapsed: float,
        rejected: list[dict[str, Any]],
        declined: list[dict[str, Any]],
        privacy: dict[str, Any],
    ) -> dict[str, Any]:
        """The round's record: the family's report and what the run measured, written
        everywhere it goes."""
        record = {
            "round": report.server_round,
            "accuracy": report.accuracy,
            "loss": report.loss,
            "bytes_up": sum(traffic.up.values()),
            "bytes_down": sum(traffic.down.values()),
            "seconds": seconds,
            "elapsed": elapsed,
            "clients": report.clients,
            "contributors": report.contributors,
            "rejected": rejected,
            "declined": declined,
            **privacy,
            **report.extra,
        }
        self.history.append(record)
        self.out.append_round(record)
        self.publisher.publish(record)
        self.tracker.record(record)
        self.progress.update(record)
        self._log(record)
        return record

    def close(self) -> None:
        """Stop what the run serves (the Prometheus endpoint, once it was scraped; a
        Ctrl-C ends that wait) and the progress bar."""
        self.publisher.close(give_up=interrupt.requested)
        self.progress.close()

    def _log(self, record: dict[str, Any]) -> None:
        accuracy = record["accuracy"]
        privacy = record.get("privacy", {})
        spent = (
            f"  ε {privacy['epsilon_max']:.3f}" if privacy.get("epsilon_max") is not None else ""
        ) + (
            f"  user-level ε {privacy['user_level_epsilon']:.3f}"
            if "user_level_epsilon" in privacy
            else ""
        )
        log.info(
            "round %d/%d  accuracy %s  clients %d  rejected %d%s  %.2fs",
            record["round"],
            self.rounds,
            "n/a" if accuracy is None else f"{accuracy:.4f}",
            len(record["clients"]),
            len(record["rejected"]),
            spent,
            record["seconds"],
        )
