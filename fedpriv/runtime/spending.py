"""What each node spent, recorded by the server as each reply arrives (``spending.json``).

A noisy update spends privacy the moment the server receives it, checkpoint or not. If
a node's accountant history came back from the last checkpoint, a run killed between
checkpoints would run the lost rounds again with fresh noise and never count the
updates it had already received. So the server writes every arriving reply's node
state (its Opacus accountant history and counters) to ``spending.json`` before any
family reads the reply, atomically and with mode 0600, and a resumed run gives each
node back that state, the newest there is. The server's privacy ledger (central DP's
releases) is written there too before each message leaves the server: a released model
is counted before anyone can see it.

States are keyed by partition as the server knows it: each node is bound to the
partition it names at its first contact (the first message it answers: a warm-up, a
restore's identification, else its first reply), once. Later claims are not used, and a
node cannot take a partition another node holds, so no client can write another's
history. A state replaces the recorded one only if its accountant history extends it
(a late reply, or a forged one, cannot make a partition's spending smaller). A
partition two nodes claimed is recorded as contested, and a resume refuses it: which
history is whose can no longer be told.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Message

from fedpriv.results import write_atomic
from fedpriv.runtime.checkpoint import (
    NODE_STATE,
    PARTITION,
    CheckpointError,
    State,
    extends,
    unflatten,
)
from fedpriv.runtime.tree import from_json, to_json

log = logging.getLogger("fedpriv")

FORMAT = 1
#: The reply metric record a partition's reported ε and δ come from.
METRICS = "metrics"


class SpendingRecord:
    """Each partition's latest node state and reported ε, and central DP's releases."""

    def __init__(self, path: Path, num_clients: int) -> None:
        self.path = path
        self.num_clients = num_clients
        #: Each partition's node state as its node last reported it.
        self.states: dict[int, State] = {}
        #: Each partition's ε and δ, as its latest recorded reply reported them.
        self.reported: dict[int, dict[str, float]] = {}
        #: The server ledger's state when a message last left the server (None: never).
        self.ledger: dict[str, Any] | None = None
        #: node ID -> partition, bound at each node's first contact (this process's nodes).
        self.partition_of: dict[int, int] = {}
        #: Partitions two nodes claimed (kept across resumes: a resume refuses them).
        self.contested: set[int] = set()

    @classmethod
    def load(cls, path: Path, num_clients: int) -> SpendingRecord:
        """The record a run wrote (empty if it wrote none). Plain JSON: runs no code."""
        record = cls(path, num_clients)
        if not path.is_file():
            return record
        try:
            payload = json.loads(path.read_text())
            _require(isinstance(payload, dict) and payload.get("format") == FORMAT, "format")
            for key, entry in payload["partitions"].items():
                partition = int(key)
                _require(0 <= partition < num_clients, f"partition {key} of {num_clients}")
                state = {str(name): dict(values) for name, values in entry["state"].items()}
                _require(_plain(state), f"partition {key}'s state holds more than numbers")
                record.states[partition] = state
                if entry.get("reported") is not None:
                    reported = entry["reported"]
                    record.reported[partition] = {
                        "epsilon": float(reported["epsilon"]),
                        "delta": float(reported["delta"]),
                    }
            record.contested = {int(p) for p in payload["contested"]}
            ledger = from_json(payload["ledger"])
            _require(ledger is None or isinstance(ledger, dict), "ledger")
            record.ledger = ledger
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"{path} is damaged or not fedpriv's spending record ({type(error).__name__}: "
                f"{error}); resuming without it could restart the clients' privacy accounting"
            ) from error
        return record

    def save(self) -> None:
        partitions = {
            str(p): {"state": state, "reported": self.reported.get(p)}
            for p, state in sorted(self.states.items())
        }
        payload = {
            "format": FORMAT,
            "partitions": partitions,
            "contested": sorted(self.contested),
            "ledger": to_json(self.ledger),
        }
        write_atomic(self.path, json.dumps(payload, indent=1) + "\n", mode=0o600)

    # -- nodes ----------------------------------------------------------------------
    def bind(self, node: int, claim: Any) -> int | None:
        """``node``'s partition: the one it claimed at its first contact, and never
        another after; None if its first claim was invalid or another node's partition."""
        if node in self.partition_of:
            bound = self.partition_of[node]
            if claim is not None and _partition(claim) != bound:
                log.warning(
                    "node %s (partition %d) claimed partition %s: ignored", node, bound, claim
                )
            return bound
        partition = _partition(claim)
        if partition is None or not 0 <= partition < self.num_clients:
            log.warning(
                "node %s claimed partition %r, not in [0, %d): its state is not recorded",
                node, claim, self.num_clients,
            )  # fmt: skip
            return None
        holder = next((n for n, p in self.partition_of.items() if p == partition), None)
        if holder is not None:
            log.warning(
                "node %s claimed partition %d, which node %s holds: its state is not recorded",
                node, partition, holder,
            )  # fmt: skip
            if partition not in self.contested:
                self.contested.add(partition)
                self.save()
            return None
        self.partition_of[node] = partition
        return partition

    def learn(self, replies: Iterable[Message]) -> None:
        """Bind each answering node to the partition its first-contact reply names."""
        for reply in replies:
            if reply.has_error() or not reply.has_content():
                continue
            metrics = reply.content.metric_records.get(METRICS)
            if metrics is not None and PARTITION in metrics:
                self.bind(reply.metadata.src_node_id, metrics[PARTITION])

    # -- replies --------------------------------------------------------------------
    def harvest(self, replies: Iterable[Message]) -> None:
        """Take the node-state record off every reply that arrived (families never see
        it) and record it under its node's partition; written before returning."""
        changed = False
        for reply in replies:
            if reply.has_error() or not reply.has_content():
                continue
            record = reply.content.config_records.get(NODE_STATE)
            if record is None:
                continue
            del reply.content[NODE_STATE]
            partition = self.bind(reply.metadata.src_node_id, record.get(PARTITION))
            state = unflatten(record)
            if partition is None or not _plain(state):
                continue
            if not extends(state, self.states.get(partition, {})):
                log.warning(
                    "node %s's state spends less than partition %d's recorded one: not kept",
                    reply.metadata.src_node_id, partition,
                )  # fmt: skip
                continue
            self.states[partition] = state
            metrics = reply.content.metric_records.get(METRICS)
            if metrics is not None and "epsilon" in metrics and "delta" in metrics:
                self.reported[partition] = {
                    "epsilon": float(metrics["epsilon"]),  # type: ignore[arg-type]
                    "delta": float(metrics["delta"]),  # type: ignore[arg-type]
                }
            changed = True
        if changed:
            self.save()

    def sending(self, ledger: dict[str, Any]) -> None:
        """Messages are about to leave the server: record the ledger's ``state()`` first
        (a central-DP release is counted before the model is out). Runs whose nodes
        report no state (families that do not resume) write no file."""
        if ledger != self.ledger:
            self.ledger = ledger
            if self.states:
                self.save()


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(f"unexpected {what}")


def _partition(claim: Any) -> int | None:
    if isinstance(claim, bool) or not isinstance(claim, (int, float)) or not math.isfinite(claim):
        return None
    return int(claim) if int(claim) == claim else None


def _plain(state: State) -> bool:
    """Whether ``state`` holds only JSON values (numbers, strings, lists of them)."""
    scalar = (int, float, str, bool)
    return all(
        isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(x, scalar) for x in v))
        for values in state.values()
        for v in values.values()
    )
