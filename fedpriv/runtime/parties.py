"""Messages addressed to parties rather than to node IDs, for the families whose
protocol names its parties (vertical: the label owner is party 0; swarm: peer k).

A node says which party it is (its ``party`` metric) in its reply to the first message.
:class:`Parties` learns the node↔party map from that reply, once; the bytes each party
sent and received are the run's :class:`~fedpriv.runtime.exchange.Exchange` counts for
its node. Both families use the same exchange; a horizontal round uses Flower's
strategies on node IDs instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedpriv.errors import SimulationError
from fedpriv.records import Traffic, metric
from fedpriv.runtime.context import RunContext
from fedpriv.runtime.exchange import not_answered

log = logging.getLogger("fedpriv")

#: The reply metric in which a node names its party.
PARTY = "party"


class PartyFailure(SimulationError):
    """A party did not answer, or answered with an error: the protocol cannot go on."""


class Parties:
    """The parties of one run: who is which node."""

    def __init__(self, count: int) -> None:
        self.count = count
        #: Party -> node ID, from :meth:`first_contact`.
        self.nodes: dict[int, int] = {}

    def traffic(self, ctx: RunContext) -> Traffic:
        """Payload bytes to and from each party this round (by party)."""
        counted, by_party = ctx.exchange.traffic, Traffic()
        for party, node in self.nodes.items():
            by_party.up[party] = counted.up[node]
            by_party.down[party] = counted.down[node]
        return by_party

    def first_contact(
        self, grid: Grid, ctx: RunContext, message_type: str, content: RecordDict | None = None
    ) -> dict[int, Message]:
        """Send every node the same first message; learn each node's party from its
        reply. Every party 0..count-1 must answer, once, without error."""
        nodes = sorted(grid.get_node_ids())
        replies = ctx.exchange.first_contact(grid, nodes, message_type, content)
        if (unanswered := not_answered(nodes, replies)) is not None:
            count, reason = unanswered
            raise PartyFailure(f"{count} node(s) failed {message_type}: {reason}")
        by_party = {int(metric(reply, PARTY)): reply for reply in replies}
        if sorted(by_party) != list(range(self.count)) or len(replies) != self.count:
            named = sorted(int(metric(reply, PARTY)) for reply in replies)
            raise PartyFailure(f"nodes report parties {named}; expected 0..{self.count - 1}")
        self.nodes = {party: reply.metadata.src_node_id for party, reply in by_party.items()}
        return by_party

    def send(
        self,
        grid: Grid,
        ctx: RunContext,
        message_type: str,
        contents: Mapping[int, RecordDict],
        *,
        timeout: float | None = None,
        require_all: bool = True,
    ) -> dict[int, Message]:
        """One message per party in ``contents``; the replies that came back without
        error, by party. A party without one is a :class:`PartyFailure` when
        ``require_all``, else a warning (the family goes on without it)."""
        messages = {
            party: Message(content=c, dst_node_id=self.nodes[party], message_type=message_type)
            for party, c in contents.items()
        }
        party_of = {node: party for party, node in self.nodes.items()}
        replies: dict[int, Message] = {}
        failures: dict[int, str] = {}
        for reply in ctx.exchange.send_and_receive(grid, messages.values(), timeout):
            party = party_of[reply.metadata.src_node_id]
            if reply.has_error():
                failures[party] = f"failed {message_type}: {reply.error.reason}"
                continue
            replies[party] = reply
        wait = (
            f"{timeout:g} s"
            if timeout is not None
            else (f"engine.round_timeout_s={ctx.config.engine.round_timeout_s:g}")
        )
        for party in sorted(set(messages) - set(replies) - set(failures)):
            failures[party] = f"did not answer {message_type} within {wait}"
        for party, reason in sorted(failures.items()):
            if require_all:
                raise PartyFailure(f"party {party} (node {self.nodes[party]}) {reason}")
            log.warning("party %d: %s; going on without it", party, reason)
        return replies
