"""RunContext: the machinery every strategy family shares on the server side.

Waiting for nodes, the round clock, bytes accounting, rejecting bad replies, evaluation
of a global model on the held-out test split, and the results directory. Families call
it; none re-implements it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedpriv.config import ExperimentConfig
from fedpriv.errors import SimulationError
from fedpriv.privacy.ledger import ServerLedger, declined_reason
from fedpriv.records import payload_nbytes
from fedpriv.results import RunDirectory
from fedpriv.runtime.checkpoint import RESTORE, SPENDING_FILE, Checkpoint, restore_content
from fedpriv.runtime.progress import Progress
from fedpriv.runtime.spending import SpendingRecord
from fedpriv.telemetry import RoundPublisher

log = logging.getLogger("fedpriv")


#: Seconds between pulls for replies. Flower's Grid.send_and_receive waits 3 s between
#: pulls from a SuperLink, which a deployed round pays on every exchange.
PULL_INTERVAL_S = 0.05


def exchange(grid: Grid, messages: list[Message], timeout: float) -> tuple[set[str], list[Message]]:
    """Push ``messages`` and pull their replies until all arrived or ``timeout`` passed;
    returns the sent messages' IDs and the replies."""
    sent = set(grid.push_messages(messages))
    pending = set(sent)
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        arrived = list(grid.pull_messages(pending))
        replies += arrived
        pending -= {reply.metadata.reply_to_message_id for reply in arrived}
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(PULL_INTERVAL_S)
    return sent, replies


def not_answered(nodes: list[int], replies: list[Message]) -> tuple[int, str] | None:
    """How many of ``nodes`` sent no reply or an error, and the first reason; None when
    every node answered."""
    failed = [reply for reply in replies if reply.has_error()]
    if len(replies) >= len(nodes) and not failed:
        return None
    reason = str(failed[0].error.reason) if failed else "no reply"
    return len(nodes) - len(replies) + len(failed), reason


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


class RunContext:
    """Shared server-side services for one run (one per ServerApp execution)."""

    def __init__(
        self,
        config: ExperimentConfig,
        out: RunDirectory,
        server_key: bytes | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.config = config
        #: The checkpoint this run resumes from (None: a fresh run).
        self.checkpoint = checkpoint
        #: The server's crypto context (parameters only: it cannot decrypt), if any.
        self.server_key = server_key
        self.out = out
        self.history: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.ledger = ServerLedger(config)
        self.started = time.perf_counter()  # start_clock() sets it when training starts
        #: What each node spent, written as replies arrive (a resumed run continues it).
        self.spending = SpendingRecord(out.path / SPENDING_FILE, config.num_clients)
        if checkpoint is not None:
            self.history = list(checkpoint.history)
            if checkpoint.ledger:
                self.ledger.restore(checkpoint.ledger)
            self.spending = SpendingRecord.load(self.spending.path, config.num_clients)
        self._round_started = self.started
        self._bytes_up = self._bytes_down = 0
        self._rejected: list[dict[str, Any]] = []
        self._declined: list[dict[str, Any]] = []
        self.publisher = RoundPublisher(config.telemetry, out.path)
        self.progress = Progress(config.rounds, done=len(self.history))

    @property
    def first_round(self) -> int:
        """The round to run next: 1, or the one after the checkpoint's."""
        return 1 if self.checkpoint is None else self.checkpoint.round + 1

    def close(self) -> None:
        """Stop what the run serves (the Prometheus endpoint) and the progress bar."""
        self.publisher.close()
        self.progress.close()

    # -- nodes and messages -------------------------------------------------
    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """Block until all ``num_clients`` nodes registered; error after ``engine.node_wait_s``."""
        expected = self.config.num_clients
        deadline = time.monotonic() + self.config.engine.node_wait_s
        while len(nodes := list(grid.get_node_ids())) < expected:
            if time.monotonic() > deadline:
                raise SimulationError(
                    f"only {len(nodes)} of num_clients={expected} nodes registered within "
                    f"engine.node_wait_s={self.config.engine.node_wait_s}"
                )
            time.sleep(0.2)
        return nodes

    def send_and_receive(
        self, grid: Grid, messages: Iterable[Message], timeout: float | None = None
    ) -> list[Message]:
        """Send, wait up to ``timeout`` (default ``engine.round_timeout_s``), and count
        payload bytes both ways."""
        messages = list(messages)
        self._bytes_down += sum(payload_nbytes(m.content) for m in messages)
        timeout = self.config.engine.round_timeout_s if timeout is None else timeout
        self.spending.sending(self.ledger.state())  # a release is counted before it leaves
        sent, arrived = exchange(grid, messages, timeout)
        replies = self.screen(arrived, sent)
        self.spending.harvest(arrived)  # every reply received spent privacy, kept or not
        if len(replies) < len(messages):
            log.warning("round timed out: %d of %d replies", len(replies), len(messages))
        return replies

    def push(self, grid: Grid, messages: list[Message]) -> list[str]:
        """Send without waiting (asynchronous strategies); returns the message IDs."""
        self._bytes_down += sum(payload_nbytes(m.content) for m in messages)
        self.spending.sending(self.ledger.state())
        return list(grid.push_messages(messages))

    def pull(self, grid: Grid, pending: set[str]) -> tuple[list[Message], set[str]]:
        """The replies to ``pending`` messages that arrived so far, screened; and the IDs
        of every message answered, screened out or not (none of them is pending now)."""
        if not pending:
            return [], set()
        arrived = list(grid.pull_messages(pending))
        answered = {reply.metadata.reply_to_message_id for reply in arrived} & pending
        replies = self.screen(arrived, pending)
        self.spending.harvest(arrived)
        return replies, answered

    def screen(self, replies: list[Message], sent: set[str]) -> list[Message]:
        """Count every reply's bytes, and reject before any family reads it a reply to a
        message not sent in this exchange (an old round's, say), a second reply to one
        message, or a payload over ``engine.max_reply_mb``."""
        limit = self.config.engine.max_reply_mb * 1e6
        answered: set[str] = set()
        kept = []
        for reply in replies:
            size = payload_nbytes(reply.content) if reply.has_content() else 0
            self._bytes_up += size
            to = reply.metadata.reply_to_message_id
            if to not in sent:
                self.reject(reply, f"reply to message {to}, which this exchange did not send")
            elif to in answered:
                self.reject(reply, f"duplicate reply to message {to}")
            elif size > limit:
                self.reject(
                    reply,
                    f"payload of {size / 1e6:.1f} MB exceeds engine.max_reply_mb="
                    f"{self.config.engine.max_reply_mb:g}",
                )
            elif problem := self.privacy_problem(reply):
                self.reject(reply, problem)
            else:
                answered.add(to)
                kept.append(reply)
        return kept

    def privacy_problem(self, reply: Message) -> str | None:
        """Why a train reply lacks the evidence of the client-side privacy the config
        asks for (a client that trained without DP-SGD, say); None if it has it. Its
        ε would otherwise be missing from the ledger while the run reports DP."""
        if (
            not reply.metadata.message_type.startswith("train")
            or reply.has_error()
            or not reply.has_content()
            or declined_reason(reply) is not None
        ):
            return None
        records = list(reply.content.metric_records.values())
        return self.config.privacy.evidence_problem(records[0] if records else {})

    def first_contact(
        self,
        grid: Grid,
        nodes: Iterable[int],
        message_type: str,
        content: RecordDict | None = None,
    ) -> list[Message]:
        """Send every node in ``nodes`` the same first message and wait for the replies.
        The first message also starts each node's ClientApp (seconds in a simulation,
        a process on a device), so it waits ``max(round_timeout_s, node_wait_s)``."""
        content = RecordDict() if content is None else content
        messages = [
            Message(content=content, dst_node_id=node, message_type=message_type) for node in nodes
        ]
        engine = self.config.engine
        replies = self.send_and_receive(
            grid, messages, max(engine.round_timeout_s, engine.node_wait_s)
        )
        self.spending.learn(replies)  # each node's partition, as it first names it
        return replies

    # -- checkpoints ----------------------------------------------------------
    def save_checkpoint(self, server_round: int, family_state: Any, last: bool = False) -> None:
        """Write ``checkpoint.npz`` when ``checkpoint_every`` says this round is due, and
        after the ``last`` round (the final model, for audits); ``family_state`` None:
        the family cannot checkpoint (nothing is written)."""
        every = self.config.checkpoint_every
        if family_state is None or not every or (server_round % every and not last):
            return
        Checkpoint(
            round=server_round,
            elapsed=self.elapsed(),
            history=self.history,
            family_state=family_state,
            ledger=self.ledger.state(),
        ).save(self.out.path)

    def resume(self, grid: Grid) -> None:
        """Before the first resumed round: give each node its own partition's state
        back, the newest the server received (not the checkpoint's), and take what each
        partition last reported into the ledger."""
        assert self.checkpoint is not None
        if self.spending.ledger is not None:  # newer than the checkpoint's: sent after it
            self.ledger.restore(self.spending.ledger)
        for partition, spent in sorted(self.spending.reported.items()):
            self.ledger.client_reported(partition, spent)
        if self.spending.states:
            self._restore_nodes(grid)
        log.info("resumed after round %d of %d", self.checkpoint.round, self.config.rounds)

    def _restore_nodes(self, grid: Grid) -> None:
        """Ask the nodes not yet bound to a partition which one they hold, then send each
        node its partition's state alone."""
        nodes = list(grid.get_node_ids())
        unbound = [node for node in nodes if node not in self.spending.partition_of]
        if unbound:
            replies = self.first_contact(grid, unbound, RESTORE)
            self._all_answered(unbound, replies, "say which partition they hold")
        if self.spending.contested:
            raise SimulationError(
                f"partitions {sorted(self.spending.contested)} were claimed by two nodes each "
                f"(see {SPENDING_FILE} and the log); whose privacy history to give back cannot "
                "be told, so the run is not resumed"
            )
        holder_of = {p: n for n, p in self.spending.partition_of.items() if n in nodes}
        if missing := sorted(set(self.spending.states) - set(holder_of)):
            log.warning("no node holds partitions %s: their state is not restored", missing)
        messages = [
            Message(content=restore_content(p, state), dst_node_id=holder_of[p],
                    message_type=RESTORE)
            for p, state in sorted(self.spending.states.items()) if p in holder_of
        ]  # fmt: skip
        engine = self.config.engine
        replies = self.send_and_receive(
            grid, messages, max(engine.round_timeout_s, engine.node_wait_s)
        )
        self._all_answered([m.metadata.dst_node_id for m in messages], replies,
                           "take their state back")  # fmt: skip

    def _all_answered(self, nodes: list[int], replies: list[Message], what: str) -> None:
        if (unanswered := not_answered(nodes, replies)) is not None:
            count, reason = unanswered
            raise SimulationError(
                f"{count} of {len(nodes)} nodes did not {what} ({reason}); resuming without "
                "their state would restart their privacy accounting"
            )

    def reject(self, reply: Message, reason: str) -> None:
        """Log and record a reply that will not be used; the round goes on."""
        node = reply.metadata.src_node_id
        log.warning("rejected reply from node %s: %s", node, reason)
        self._rejected.append({"node_id": node, "reason": reason})

    def partition_of(self, node: int, claimed: Any) -> int | None:
        """The partition the server holds ``node`` to: the one it named at its first
        contact (a later claim of another partition is ignored), so no client can
        change another's ε or budget in the ledger; None for an invalid first claim."""
        return self.spending.bind(node, claimed)

    def client_reported(self, node: int, metrics: Any) -> None:
        """A client's reported ε and δ, into the ledger under the node's own partition."""
        partition = self.partition_of(node, metrics.get("partition-id"))
        if partition is not None:
            self.ledger.client_reported(partition, metrics)

    def decline(self, reply: Message, reason: str) -> None:
        """Record a client that chose not to train (e.g. its privacy budget is spent)."""
        metrics = reply.content.metric_records["metrics"]
        partition = self.partition_of(reply.metadata.src_node_id, metrics.get("partition-id"))
        if partition is None:
            self.reject(reply, f"declined for partition {metrics.get('partition-id')!r}, "
                        "which is not this node's")  # fmt: skip
            return
        log.info("partition %d declined to train: %s", partition, reason)
        self.ledger.declined(partition)
        self.ledger.client_reported(partition, metrics)
        self._declined.append({"partition-id": partition, "reason": reason})

    # -- the round clock -------------------------------------------------------
    def start_clock(self) -> None:
        """Training starts now (after the nodes' start-up): ``elapsed`` and the time
        budget count from here, continuing a resumed run's count."""
        spent = self.checkpoint.elapsed if self.checkpoint is not None else 0.0
        self.started = time.perf_counter() - spent

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def budget_reason(self) -> str | None:
        """Why the run must stop for ``time_budget_s``, or None while time is left."""
        budget = self.config.time_budget_s
        if budget is None or self.elapsed() < budget:
            return None
        return f"time_budget_s={budget:g} reached after {self.elapsed():.1f} s of training"

    def start_round(self, server_round: int) -> None:
        self._round_started = time.perf_counter()
        self._bytes_up = self._bytes_down = 0
        self._rejected = []
        self._declined = []

    def end_round(self, report: RoundReport) -> dict[str, Any]:
        """Record a finished round: append it to ``metrics.jsonl`` and the history."""
        for client in report.clients:
            if "partition-id" in client and "node_id" in client:
                self.client_reported(int(client["node_id"]), client)
        record = {
            "round": report.server_round,
            "accuracy": report.accuracy,
            "loss": report.loss,
            "bytes_up": self._bytes_up,
            "bytes_down": self._bytes_down,
            "seconds": time.perf_counter() - self._round_started,
            "elapsed": self.elapsed(),
            "clients": report.clients,
            "rejected": self._rejected,
            "declined": self._declined,
            **self.ledger.round_record(),
            **report.extra,
        }
        self.history.append(record)
        self.out.append_round(record)
        self.publisher.publish(record)
        self.progress.update(record)
        self.stop_reason = report.stop_reason or self.ledger.stop_reason() or self.budget_reason()
        if self.stop_reason:
            log.warning("stopping after round %d: %s", report.server_round, self.stop_reason)
        acc = "n/a" if report.accuracy is None else f"{report.accuracy:.4f}"
        privacy = record.get("privacy", {})
        spent = (f"  ε {privacy['epsilon_max']:.3f}" if "epsilon_max" in privacy else "") + (
            f"  user-level ε {privacy['user_level_epsilon']:.3f}"
            if "user_level_epsilon" in privacy
            else ""
        )
        log.info(
            "round %d/%d  accuracy %s  clients %d  rejected %d%s  %.2fs",
            report.server_round,
            self.config.rounds,
            acc,
            len(report.clients),
            len(self._rejected),
            spent,
            record["seconds"],
        )
        return record
