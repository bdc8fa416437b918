"""Messages between the server and its nodes: send, wait, screen, count.

Every family's messages go through one :class:`Exchange`, synchronous (send and wait
for the replies) or asynchronous (push, then pull what arrived). It waits for the nodes
to register, rejects a reply before any family reads it (a reply to a message this
exchange did not send, a second reply, an oversized payload, a train reply without the
evidence of the client-side privacy the config asks for), counts the payload bytes
each node sent and received, and records what each node spent as its reply arrives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedpriv.config import ExperimentConfig
from fedpriv.errors import SimulationError
from fedpriv.privacy.ledger import ServerLedger, declined_reason
from fedpriv.records import Traffic, payload_nbytes
from fedpriv.runtime.flower_wakeup import reply_doorbell
from fedpriv.runtime.spending import SpendingRecord

log = logging.getLogger("fedpriv")

#: Longest wait between pulls for replies. In simulation the last pending reply ends the
#: wait as it is stored (:mod:`fedpriv.runtime.flower_wakeup`); a SuperLink's Grid (gRPC)
#: has no such signal, so there this is the poll (Flower's Grid.send_and_receive: 3 s).
PULL_INTERVAL_S = 0.05


def push_and_pull(
    grid: Grid, messages: list[Message], timeout: float
) -> tuple[set[str], list[Message]]:
    """Push ``messages`` and pull their replies until all arrived or ``timeout`` passed;
    returns the sent messages' IDs and the replies."""
    doorbell = reply_doorbell(grid)
    sent = set(grid.push_messages(messages))
    pending = set(sent)
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        mark = doorbell.mark()
        arrived = list(grid.pull_messages(pending))
        replies += arrived
        pending -= {reply.metadata.reply_to_message_id for reply in arrived}
        if not pending or time.monotonic() >= deadline:
            break
        doorbell.wait(mark, PULL_INTERVAL_S, rings=len(pending))
    return sent, replies


def not_answered(nodes: list[int], replies: list[Message]) -> tuple[int, str] | None:
    """How many of ``nodes`` sent no reply or an error, and the first reason; None when
    every node answered."""
    failed = [reply for reply in replies if reply.has_error()]
    if len(replies) >= len(nodes) and not failed:
        return None
    reason = str(failed[0].error.reason) if failed else "no reply"
    return len(nodes) - len(replies) + len(failed), reason


class Exchange:
    """The run's messages to and from nodes; :meth:`new_round` starts a round's tally
    (bytes by node, rejected replies)."""

    def __init__(
        self, config: ExperimentConfig, ledger: ServerLedger, spending: SpendingRecord
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.spending = spending
        #: Payload bytes to and from each node ID this round.
        self.traffic = Traffic()
        #: Replies rejected this round: ``{"node_id", "reason"}``.
        self.rejected: list[dict[str, Any]] = []

    def new_round(self) -> None:
        self.traffic = Traffic()
        self.rejected = []

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
        """Send, wait up to ``timeout`` (default ``engine.round_timeout_s``); the replies
        that passed screening."""
        messages = list(messages)
        self._sending(messages)
        timeout = self.config.engine.round_timeout_s if timeout is None else timeout
        sent, arrived = push_and_pull(grid, messages, timeout)
        replies = self.screen(arrived, sent)
        self.spending.harvest(arrived)  # every reply received spent privacy, kept or not
        if len(replies) < len(messages):
            log.warning("round timed out: %d of %d replies", len(replies), len(messages))
        return replies

    def push(self, grid: Grid, messages: list[Message]) -> list[str]:
        """Send without waiting (asynchronous strategies); returns the message IDs."""
        self._sending(messages)
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
        replies = self.send_and_receive(grid, messages, self.start_up_timeout)
        self.spending.learn(replies)  # each node's partition, as it first names it
        return replies

    @property
    def start_up_timeout(self) -> float:
        """How long a message that may start a node's ClientApp is waited for."""
        return max(self.config.engine.round_timeout_s, self.config.engine.node_wait_s)

    def screen(self, replies: list[Message], sent: set[str]) -> list[Message]:
        """Count every reply's bytes, and reject before any family reads it a reply to a
        message not sent in this exchange (an old round's, say), a second reply to one
        message, or a payload over ``engine.max_reply_mb``."""
        limit = self.config.engine.max_reply_mb * 1e6
        answered: set[str] = set()
        kept = []
        for reply in replies:
            size = payload_nbytes(reply.content) if reply.has_content() else 0
            self.traffic.up[reply.metadata.src_node_id] += size
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

    def reject(self, reply: Message, reason: str) -> None:
        """Log and record a reply that will not be used; the round goes on."""
        node = reply.metadata.src_node_id
        log.warning("rejected reply from node %s: %s", node, reason)
        self.rejected.append({"node_id": node, "reason": reason})

    def _sending(self, messages: list[Message]) -> None:
        for message in messages:
            self.traffic.down[message.metadata.dst_node_id] += payload_nbytes(message.content)
        self.spending.sending(self.ledger.state())  # a release is counted before it leaves
