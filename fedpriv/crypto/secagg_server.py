"""The server's side of ``crypto=ckks_secagg``: run the key ceremony, stamp each round's
clients, add their masked ciphertexts, and work out the masks' correction.

The server relays sealed shares it cannot open and, after a round, rebuilds from ``t``
clients' shares the survivors' self-mask seeds and the dropped clients' mask secrets.
From them it computes the plaintext vector (mod 2^bits) that removes the masks from the
encrypted sum, and sends it with the state; only key holders can decrypt the sum it
corrects. With fewer than ``t`` survivors the round is refused, with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedpriv.crypto import masking
from fedpriv.crypto.base import Aggregate
from fedpriv.crypto.records import CORRECTION
from fedpriv.crypto.secagg_node import DELIVER, KEYS, PEERS, RECORD, ROUND, SHARE, UNMASK
from fedpriv.crypto.server import CkksAggregator
from fedpriv.errors import ConfigError

log = logging.getLogger("fedpriv")

#: Sends messages to nodes and returns the replies that came back (errors included).
Send = Callable[[list[Message]], list[Message]]


def _ask(node: int, message_type: str, values: dict[str, Any]) -> Message:
    content = RecordDict({RECORD: ConfigRecord(values)})
    return Message(content, dst_node_id=node, message_type=message_type)


def _answers(replies: list[Message]) -> dict[int, Any]:
    """Each node's answer record, errors left out (logged)."""
    out = {}
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("secagg: node %s failed: %s", node, reply.error.reason)
        elif RECORD in reply.content.config_records:
            out[node] = reply.content.config_records[RECORD]
    return out


def key_ceremony(send: Send, nodes: list[int], threshold: int) -> dict[int, bytes]:
    """Run the key ceremony among ``nodes``: each makes its keys and seals a share of its
    mask secret to every other through the server. Returns the public mask keys of the
    nodes that completed it (the others take no part in the run's masking)."""
    keys = _answers(send([_ask(n, KEYS, {}) for n in nodes]))
    nodes = sorted(keys)
    table: dict[str, Any] = {"nodes": nodes, "threshold": threshold}
    for node in nodes:  # the keys each node advertised, signed on a fleet
        for field in ("channel", "mask", "party", "signature"):
            if field in keys[node]:
                table[f"{field}/{node}"] = keys[node][field]
    shared = _answers(send([_ask(n, SHARE, table) for n in nodes]))
    inbox: dict[int, dict[str, Any]] = {n: {} for n in shared}
    for source, sealed in shared.items():
        for dst in shared:
            inbox[dst][f"from/{source}"] = sealed[f"to/{dst}"]
    delivered = _answers(send([_ask(n, DELIVER, inbox[n]) for n in inbox]))
    log.info(
        "secagg: %d of %d nodes hold mask keys; threshold %d", len(delivered), len(nodes), threshold
    )
    return {n: cast(bytes, keys[n]["mask"]) for n in sorted(delivered)}


class SecAggAggregator(CkksAggregator):
    """:class:`CkksAggregator` over masked updates, with the masking protocol's steps."""

    def __init__(
        self,
        *args: Any,
        threshold: int | None,
        quantizer: Callable[[int], masking.Quantizer],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.requested = threshold
        self.threshold = 0
        self.make_quantizer = quantizer
        self.quantizer = quantizer(1)
        self.send: Send | None = None
        #: Public mask keys by node, after the ceremony.
        self.mask_keys: dict[int, bytes] = {}
        #: Nodes whose mask secret was rebuilt (they dropped): never a round's client again.
        self.retired: set[int] = set()
        #: Each stamped round's clients, until it is aggregated.
        self.peers: dict[int, list[int]] = {}
        self.current: list[int] = []

    def open(self, send: Send, *, nodes: list[int], per_round: int, num_clients: int) -> None:
        """The key ceremony among ``nodes`` (each round samples ``per_round`` of them)."""
        self.quantizer = self.make_quantizer(num_clients)
        self.threshold = self.requested or per_round // 2 + 1
        if not 2 <= self.threshold <= per_round:
            raise ConfigError(
                f"crypto.threshold={self.threshold}: with {per_round} clients a round it must "
                f"be from 2 to {per_round} (null: a majority, {per_round // 2 + 1}); a round "
                "then survives (clients - threshold) dropouts"
            )
        self.send = send
        self.mask_keys = key_ceremony(send, nodes, self.threshold)

    def stamp(self, server_round: int, messages: list[Message]) -> None:
        """Tell each train message's node the round and its clients (those with keys)."""
        peers = sorted(
            m.metadata.dst_node_id
            for m in messages
            if m.metadata.dst_node_id in self.mask_keys
            and m.metadata.dst_node_id not in self.retired
        )
        self.peers[server_round] = self.current = peers
        for message in messages:
            config = message.content.config_records["config"]
            config[ROUND], config[PEERS] = server_round, peers

    def check(self, reply: Message, current: ArrayRecord) -> str | None:
        if (problem := super().check(reply, current)) is not None:
            return problem
        sealed = reply.content.config_records.get(RECORD)
        peers = self.current
        if reply.metadata.src_node_id not in peers:
            return "not among this round's clients (no mask keys, or its secret was revealed)"
        if sealed is None or any(f"to/{p}" not in sealed for p in peers):
            return f"no self-mask share sealed to each of the round's clients {peers}"
        return None

    def aggregate(
        self, server_round: int, replies: list[Message], current: ArrayRecord, sent: int
    ) -> Aggregate:
        result = super().aggregate(server_round, replies, current, sent)
        peers = self.peers.pop(server_round, [])
        rejected = {id(reply) for reply, _ in result.rejected}
        good = [r for r in replies if id(r) not in rejected]
        started = time.perf_counter()
        correction, refusal = self.correction(server_round, peers, good)
        result.record["crypto"]["unmask_seconds"] = time.perf_counter() - started
        result.record["crypto"]["threshold"] = self.threshold
        if correction is None:
            log.warning("round %d refused: %s", server_round, refusal)
            result.record["crypto"]["refused"] = refusal
            return Aggregate(None, result.rejected, result.record)
        assert result.arrays is not None
        result.arrays[CORRECTION] = Array(correction)
        return result

    def correction(
        self, server_round: int, peers: list[int], good: list[Message]
    ) -> tuple[np.ndarray | None, str]:
        """What removes the masks from the sum of ``good``'s updates (mod 2^bits), or
        None and why the round cannot be unmasked."""
        survivors = sorted(r.metadata.src_node_id for r in good)
        dropped = sorted(set(peers) - set(survivors))
        short = (
            f"{len(survivors)} of the round's {len(peers)} clients sent a usable update; "
            f"removing the masks needs threshold={self.threshold}: the round is skipped and "
            "the global model kept"
        )
        if len(survivors) < self.threshold:
            return None, short
        assert self.send is not None, "open() runs first"
        sealed = {r.metadata.src_node_id: r.content.config_records[RECORD] for r in good}
        asks = []
        for node in survivors:
            values: dict[str, Any] = {
                "round": server_round,
                "survivors": survivors,
                "dropped": dropped,
            }
            values.update({f"from/{s}": sealed[s][f"to/{node}"] for s in survivors})
            asks.append(_ask(node, UNMASK, values))
        answers = _answers(self.send(asks))
        self.retired |= set(dropped)
        if len(answers) < self.threshold:
            return None, f"{len(answers)} clients answered the unmasking, " + short
        size, bits = sum(self.sizes), self.quantizer.bits
        total = np.zeros(size, dtype=np.uint64)
        for node in survivors:
            seed = masking.combine([cast(bytes, a[f"self/{node}"]) for a in answers.values()])
            total += masking.self_mask(seed, server_round, size, bits)
        for node in dropped:
            secret = masking.combine([cast(bytes, a[f"mask/{node}"]) for a in answers.values()])
            for survivor in survivors:
                agreed = masking.agree(secret, self.mask_keys[survivor])
                total += masking.pair_mask(agreed, survivor, node, server_round, size, bits)
        modulus = np.uint64((1 << bits) - 1)
        return (np.uint64(0) - total) & modulus, ""
