"""What clients report of their privacy (ε, δ, a declined round) into the server's
ledger, each under the partition its node is bound to: no client can change another's
ε or budget there."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flwr.app import Message

from fedpriv.privacy.ledger import ServerLedger
from fedpriv.runtime.exchange import Exchange
from fedpriv.runtime.spending import SpendingRecord

log = logging.getLogger("fedpriv")


class ClientReports:
    """Clients' reports into the ledger; :meth:`new_round` clears the round's declines."""

    def __init__(self, ledger: ServerLedger, spending: SpendingRecord, exchange: Exchange) -> None:
        self.ledger = ledger
        self.spending = spending
        self.exchange = exchange
        #: Clients that declined to train this round: ``{"partition-id", "reason"}``.
        self.declined: list[dict[str, Any]] = []

    def new_round(self) -> None:
        self.declined = []

    def partition_of(self, node: int, claimed: Any) -> int | None:
        """The partition the server holds ``node`` to: the one it named at its first
        contact (a later claim of another partition is ignored); None for an invalid
        first claim."""
        return self.spending.bind(node, claimed)

    def reported(self, node: int, metrics: Mapping[str, Any]) -> None:
        """A client's reported ε and δ, into the ledger under the node's own partition."""
        partition = self.partition_of(node, metrics.get("partition-id"))
        if partition is not None:
            self.ledger.client_reported(partition, metrics)

    def decline(self, reply: Message, reason: str) -> None:
        """Record a client that chose not to train (e.g. its privacy budget is spent)."""
        metrics = reply.content.metric_records["metrics"]
        partition = self.partition_of(reply.metadata.src_node_id, metrics.get("partition-id"))
        if partition is None:
            self.exchange.reject(reply, f"declined for partition {metrics.get('partition-id')!r}, "
                                 "which is not this node's")  # fmt: skip
            return
        log.info("partition %d declined to train: %s", partition, reason)
        self.ledger.declined(partition)
        self.ledger.client_reported(partition, metrics)
        self.declined.append({"partition-id": partition, "reason": reason})
