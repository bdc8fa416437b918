"""FedBuff under ``crypto=ckks_secagg``: one-time masks whose Shamir shares add up over
any buffer (the idea of LightSecAgg, So et al., MLSys 2022), so no single key holder,
nor a server that follows the protocol with fewer than ``threshold`` clients, can open
one client's update (the bounds, and a server that breaks the protocol: docs/crypto.md).

Pairwise masks cancel only in a sum of a cohort agreed before masking; a FedBuff buffer
is whoever arrives first. Instead each client draws a fresh mask ``z`` (field elements
mod p) for every update, sends ``q + z`` (its quantized update ``q``), and seals one
share of ``z`` to every node of the key ceremony. When a buffer of K updates from K
different clients is full, the server asks idle nodes to combine
(``query.secagg_combine``): node j answers ``Σ [z_i]_j``, sealed to one key holder, the
*refresher*. From ``threshold - 1 + pieces`` answers the refresher decodes ``Σ z_i``
(never a single ``z_i``), removes it from the server's ``Σ (q_i + z_i)``, and encrypts
the step under CKKS (``query.secagg_refresh``); the server adds that ciphertext to the
encrypted offset as :mod:`fedpriv.crypto.offset` does for ``crypto=ckks``.

Every update of a buffer counts once: unequal integer weights on masked integers
(``w_a·q_a + w_b·q_b``) would show the updates' low-order digits, so staleness weights
are refused at config time (``strategy.staleness=constant``). A node combines a buffer
only of at least ``buffer_size`` updates from distinct clients, and a client's mask only
once (mask ids only grow, per client); a refresher unmasks a buffer once, at the scale
of its own config, and clips rather than refuses a step out of range (an altered sum's),
so its reply tells the server nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedpriv.crypto import ckks, masking, shares
from fedpriv.crypto.client import ARRAYS, METRICS
from fedpriv.crypto.offset import OffsetAggregator, OffsetClientMod, offset_chunks
from fedpriv.crypto.records import Layout, key_of
from fedpriv.crypto.secagg_node import RECORD, ROUND, SecAggNode, _ints, _reply, _state
from fedpriv.crypto.secagg_server import Send, _answers, _ask, key_ceremony
from fedpriv.errors import ConfigError

log = logging.getLogger("fedpriv")

COMBINE, REFRESH = "query.secagg_combine", "query.secagg_refresh"
#: The masked update's array in a reply, and the masked sum's in a refresh request.
MASKED = "secagg-masked"
#: First word of a sealed mask share's and a combined answer's header: neither can pass
#: for the other, nor for the ceremony's shares (whose first word is a node ID).
SHARE_TAG, ANSWER_TAG = (1 << 64) - 2, (1 << 64) - 3


def _describe(buffer: int, entries: list[tuple[int, int]]) -> bytes:
    """The buffer a combined share belongs to, bound into what is sealed to the refresher."""
    return json.dumps(["fedpriv/fedbuff-combine/v2", buffer, entries]).encode()


def _entries(record: Mapping[str, Any]) -> list[tuple[int, int]]:
    """A request's buffer: (source node, mask id) per update."""
    sources, masks = _ints(record["sources"]), _ints(record["masks"])
    if len(sources) != len(masks):
        raise ValueError(f"a buffer of {len(sources)} sources and {len(masks)} masks")
    return list(zip(sources, masks, strict=True))


def _unsealed(state: ConfigRecord, header: tuple[int, ...], token: Any) -> bytes:
    return masking.unseal(SecAggNode._channel(state, header[1]), header, cast(bytes, token))


class BufferNode:
    """The node-side handlers of masked FedBuff (picklable; state in ``context.state``)."""

    def __init__(self, buffer_size: int, pieces: int, scale: float) -> None:
        #: ``scale``: η/K times the quantization step, from this node's own config.
        self.buffer_size, self.pieces, self.scale = buffer_size, pieces, scale

    def handlers(self) -> dict[str, Any]:
        return {COMBINE: self.combine, REFRESH: self.refresh}

    def check_buffer(self, entries: list[tuple[int, int]]) -> None:
        """Refuse a buffer whose sum could show less than ``buffer_size`` clients' mix."""
        sources = [source for source, _ in entries]
        if len(set(sources)) < self.buffer_size:
            raise ValueError(
                f"a buffer of updates from {len(set(sources))} clients, fewer than "
                f"buffer_size={self.buffer_size}: its sum could show one client's update"
            )
        if len(set(sources)) != len(sources):
            raise ValueError(
                "a buffer names one client twice: the others in it could subtract theirs"
            )
        if any(mask < 1 for _, mask in entries):
            raise ValueError("a buffer names a mask id below 1")

    def combine(self, msg: Message, context: Context) -> Message:
        """``Σ [z_i]_me`` over the buffer, sealed to the refresher. Each client's masks are
        combined in the order they were made, each once: a second sum over one mask
        could isolate it."""
        state, record, me = _state(context), msg.content.config_records[RECORD], context.node_id
        entries, buffer = _entries(record), int(record["buffer"])  # type: ignore[arg-type]
        refresher = int(record["refresher"])  # type: ignore[arg-type]
        self.check_buffer(entries)
        if reused := [
            (source, mask)
            for source, mask in entries
            if mask <= int(state.get(f"combined/{source}", 0))  # type: ignore[arg-type]
        ]:
            raise ValueError(
                f"masks {reused} (client, mask id) are not newer than the last this node "
                "combined: a second sum over one mask could isolate it; refusing"
            )
        held = [
            np.frombuffer(
                _unsealed(state, (SHARE_TAG, source, me, mask), record[f"from/{index}"]),
                dtype=np.uint32,
            )
            for index, (source, mask) in enumerate(entries)
        ]
        if len({len(h) for h in held}) != 1 or not len(held[0]):
            raise ValueError(f"mask shares of lengths {[len(h) for h in held]}: not one buffer")
        total = shares.weighted_sum(held, [1] * len(held))
        for source, mask in entries:
            state[f"combined/{source}"] = mask
        head = _describe(buffer, entries)
        payload = len(head).to_bytes(4, "little") + head + total.astype(np.uint32).tobytes()
        header = (ANSWER_TAG, me, refresher, buffer)
        sealed = masking.seal(SecAggNode._channel(state, refresher), header, payload)
        return _reply(msg, {f"to/{refresher}": sealed})

    def refresh(self, msg: Message, context: Context) -> Message:
        """The buffer's step, unmasked from ``threshold - 1 + pieces`` combined shares, as
        a plaintext array for the CKKS mod to encrypt on the way out (it stays here).
        Each buffer once: a server re-sending it with an altered sum would learn from
        each outcome something of a step it must not read."""
        state, record, me = _state(context), msg.content.config_records[RECORD], context.node_id
        entries, buffer = _entries(record), int(record["buffer"])  # type: ignore[arg-type]
        self.check_buffer(entries)
        if buffer <= int(state.get("refreshed", 0)):  # type: ignore[arg-type]
            raise ValueError(f"buffer {buffer} is not newer than the last this node refreshed")
        state["refreshed"] = buffer
        nodes, threshold = _ints(state["nodes"]), int(state["threshold"])  # type: ignore[arg-type]
        masked = msg.content.array_records[MASKED][MASKED].numpy().astype(np.uint64)
        width = -(-len(masked) // self.pieces)
        head = _describe(buffer, entries)
        combined = {}
        for key, token in record.items():
            if not key.startswith("from/"):
                continue
            node = int(key.removeprefix("from/"))
            plain = _unsealed(state, (ANSWER_TAG, node, me, buffer), token)
            length = int.from_bytes(plain[:4], "little")
            answer = np.frombuffer(plain[4 + length :], dtype=np.uint32)
            if plain[4 : 4 + length] != head or len(answer) != width:
                raise ValueError(f"node {node} combined another buffer than this one")
            combined[nodes.index(node) + 1] = answer
        mask = shares.combine(combined, threshold, self.pieces, size=len(masked))
        units = shares.from_field((masked + shares.PRIME - mask) % shares.PRIME)
        step = units.astype(np.float64) * self.scale
        content = RecordDict(
            {ARRAYS: ArrayRecord({"step": Array(step)}), METRICS: MetricRecord({})}
        )
        return Message(content, reply_to=msg)


def mask_for_buffer(
    context: Context, config: Mapping[str, Any], units: np.ndarray, pieces: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """``units`` (signed integers) masked with a fresh one-time mask, and the mask's
    shares (each 1/``pieces`` of it) sealed to every node of the ceremony (the server
    relays them)."""
    state, me, mask_id = _state(context), context.node_id, int(config[ROUND])
    if mask_id < 1:
        raise ValueError(f"mask id {mask_id}: the server numbers masks from 1")
    nodes, threshold = _ints(state["nodes"]), int(state["threshold"])  # type: ignore[arg-type]
    mask = shares.uniform(len(units))
    masked = (shares.to_field(units) + mask) % shares.PRIME
    sealed: dict[str, Any] = {"mask": mask_id}
    for node, share in zip(nodes, shares.split(mask, threshold, len(nodes), pieces), strict=True):
        payload = share.astype(np.uint32).tobytes()
        sealed[f"to/{node}"] = masking.seal(
            SecAggNode._channel(state, node), (SHARE_TAG, me, node, mask_id), payload
        )
    return masked.astype(np.uint32), sealed


class MaskedOffsetClientMod(OffsetClientMod):
    """A key holder's side: decrypt the offset, send the update masked (not encrypted),
    and encrypt the step it unmasks when it is the refresher."""

    def __init__(
        self, *args: Any, step: float, field_limit: float, pieces: int, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        #: ``field_limit``: the largest |Δ| whose buffer sum stays within ±p/2.
        self.step, self.field_limit, self.pieces = step, field_limit, pieces

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        if msg.metadata.message_type != REFRESH:
            return super().__call__(msg, context, call_next)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        step = reply.content.array_records[ARRAYS]["step"].numpy()
        # Out of range only if the server altered the sum (clients check their own
        # updates): clip rather than refuse, so the reply tells it nothing.
        bound = self.limit() / 2  # per value: a pair's magnitude stays below the limit
        if np.abs(step).max(initial=0.0) >= bound:
            log.warning("refresh: a step beyond ±%.3g was clipped (an altered sum?)", bound)
            step = np.clip(step, -bound, bound) * (1 - 1e-9)
        reply.content[ARRAYS] = self.encrypted(step, reply.content.metric_records[METRICS], 0.0)
        return reply

    def wrap(
        self,
        update: np.ndarray,
        msg: Message,
        reply: Message,
        context: Context,
        decrypt_seconds: float,
    ) -> None:
        largest = float(np.abs(update).max(initial=0.0))
        if not largest < self.field_limit:
            raise ValueError(
                f"crypto=ckks_secagg: this client's update reaches |Δ| = {largest:.3g}; a "
                f"buffer's sum must stay below the field's half, so each update below "
                f"{self.field_limit:.3g}: lower crypto.step_bits (coarser precision)"
            )
        config = msg.content.config_records["config"]
        units = np.rint(update / self.step).astype(np.int64)
        masked, sealed = mask_for_buffer(context, config, units, self.pieces)
        reply.content[ARRAYS] = ArrayRecord({MASKED: Array(masked)})
        reply.content[RECORD] = ConfigRecord(sealed)
        reply.content.metric_records[METRICS]["ckks-decrypt-seconds"] = decrypt_seconds


#: An update in a buffer: its client, mask id and the shares it sealed to each node.
Entry = tuple[int, int, ConfigRecord]


class MaskedOffsetAggregator(OffsetAggregator):
    """The server's side: sum the masked updates mod p into buffers of K distinct
    clients, and when a buffer is full, have idle nodes combine their shares and one of
    them refresh the step into a ciphertext, which goes into the encrypted offset."""

    def __init__(
        self,
        params: ckks.CkksParams,
        public: bytes,
        *,
        layout: Layout,
        weight_key: str,
        threshold: int | None,
        block: int,
        pieces: int,
    ) -> None:
        super().__init__(params, public, layout=layout, weight_key=weight_key)
        self.requested, self.threshold, self.pieces = threshold, 0, pieces
        self.block = block
        self.send: Send | None = None
        self.nodes: list[int] = []
        #: Buffers filling, oldest first: a client's second update goes to the next one.
        self.filling: list[tuple[list[Entry], np.ndarray]] = []
        #: Full buffers waiting for idle nodes to combine.
        self.closed: list[tuple[list[Entry], np.ndarray]] = []
        #: Every (client, mask id) taken: a mask enters one buffer only.
        self.seen: set[tuple[int, int]] = set()
        self.steps = 0

    @property
    def pending(self) -> bool:
        return bool(self.closed)

    @property
    def needed(self) -> int:
        """Nodes whose combined shares unmask a buffer."""
        return self.threshold - 1 + self.pieces

    @property
    def buffered(self) -> int:
        """Updates taken and not yet in the offset (in buffers filling or full)."""
        return sum(len(entries) for entries, _ in self.filling + self.closed)

    def open(self, send: Send, *, nodes: list[int], per_round: int, num_clients: int) -> None:
        """The key ceremony among every node (a buffer may hold anyone's update)."""
        self.threshold = self.requested or len(nodes) // 2 + 1
        self.send = send
        self.check_threshold(len(nodes), len(nodes))
        self.nodes = sorted(key_ceremony(send, nodes, self.threshold))
        self.check_threshold(len(self.nodes), len(nodes))

    def check_threshold(self, keyed: int, nodes: int) -> None:
        """Refuse a threshold that ``keyed`` nodes with mask keys could never unmask."""
        if not 2 <= self.threshold <= keyed + 1 - self.pieces:
            raise ConfigError(
                f"crypto.threshold={self.threshold} with crypto.pieces={self.pieces}: with "
                f"{keyed} of {nodes} nodes holding mask keys it must be from 2 to "
                f"{keyed + 1 - self.pieces} (null: a majority): unmasking a buffer needs "
                "threshold - 1 + pieces nodes"
            )

    def can_train(self, node: int) -> bool:
        """Whether ``node`` took part in the key ceremony (others could not mask)."""
        return node in self.nodes

    def stamp(self, server_round: int, messages: list[Message]) -> None:
        """Each train message's mask id (the server's count of messages sent)."""
        for message in messages:
            message.content.config_records["config"][ROUND] = server_round

    def check(self, reply: Message) -> str | None:
        arrays = next(iter(reply.content.array_records.values()), None)
        sealed = reply.content.config_records.get(RECORD)
        masked = arrays.get(MASKED) if arrays is not None else None
        if masked is None or masked.dtype != "uint32" or tuple(masked.shape) != (self.layout.size,):
            return f"no masked update of {self.layout.size} uint32 values"
        if sealed is None or not isinstance(sealed.get("mask"), int):
            return "no mask id"
        if missing := [n for n in self.nodes if f"to/{n}" not in sealed]:
            return f"no mask share sealed to nodes {missing}"
        mask = cast(int, sealed["mask"])
        if mask < 1 or (reply.metadata.src_node_id, mask) in self.seen:
            return f"mask id {mask} was sent before (or is below 1)"
        return None

    def take(self, reply: Message, factor: float) -> str | None:
        """Add the masked update to the oldest filling buffer without its client, and
        close a buffer that is full. Every update counts once (``factor`` is the same
        η/K for all: staleness weights are refused under masks)."""
        arrays = next(iter(reply.content.array_records.values()))
        masked = arrays[MASKED].numpy().astype(np.uint64)
        if int(masked.max(initial=0)) >= shares.PRIME:
            return "a masked value outside the field"
        started = time.perf_counter()
        source, sealed = reply.metadata.src_node_id, reply.content.config_records[RECORD]
        mask = int(sealed["mask"])  # type: ignore[arg-type]
        self.seen.add((source, mask))
        index = next(
            (
                i
                for i, (entries, _) in enumerate(self.filling)
                if source not in [e[0] for e in entries]
            ),
            len(self.filling),
        )
        if index == len(self.filling):
            self.filling.append(([], np.zeros(self.layout.size, dtype=np.uint64)))
        entries, total = self.filling[index]
        entries.append((source, mask, sealed))
        self.filling[index] = (entries, (total + masked) % np.uint64(shares.PRIME))
        if len(entries) >= self.block:
            self.closed.append(self.filling.pop(index))
        self.costs["plaintext_bytes_up"] += self.layout.float32_bytes
        self.costs["aggregate_seconds"] += time.perf_counter() - started
        tokens = [cast(bytes, v) for k, v in sealed.items() if k.startswith("to/")]
        self.costs["ciphertext_bytes_up"] += masked.size * 4 + sum(map(len, tokens))
        return None

    def step(self) -> bool:
        """A full buffer steps the model only once idle nodes unmask it (:meth:`settle`)."""
        return False

    def settle(self, idle: list[int], *, force: bool) -> int:
        """Unmask the full buffers, oldest first, with the ``idle`` nodes and fold each
        step into the offset; returns the steps taken. With too few idle nodes it waits,
        unless ``force``: then a buffer is dropped, with the reason, and the model stays
        as it was."""
        idle = [n for n in idle if n in self.nodes]
        if len(idle) < self.needed and not force:
            return 0
        steps = 0
        while self.closed:
            entries, masked = self.closed.pop(0)
            started = time.perf_counter()
            problem = self._unmask(entries, masked, idle)
            costs = self.costs
            costs["unmask_seconds"] = (
                costs.get("unmask_seconds", 0.0) + time.perf_counter() - started
            )
            if problem is not None:
                log.warning("a buffer of %d updates was dropped: %s", len(entries), problem)
                costs["refused"] = costs.get("refused", 0) + 1
                costs["updates_dropped"] = costs.get("updates_dropped", 0) + len(entries)
                continue
            super().step()
            steps += 1
        return steps

    def _unmask(self, entries: list[Entry], masked: np.ndarray, idle: list[int]) -> str | None:
        if len(idle) < self.needed:
            return f"{len(idle)} nodes can combine; unmasking needs {self.needed}"
        assert self.send is not None, "open() runs first"
        self.steps += 1
        refresher = entries[-1][0] if entries[-1][0] in idle else min(idle)
        described: dict[str, Any] = {
            "buffer": self.steps,
            "sources": [e[0] for e in entries],
            "masks": [e[1] for e in entries],
        }
        asks = []
        for node in idle:
            values = {**described, "refresher": refresher}
            values.update({f"from/{i}": e[2][f"to/{node}"] for i, e in enumerate(entries)})
            asks.append(_ask(node, COMBINE, values))
        answers = _answers(self.send(asks))
        if len(answers) < self.needed:
            return f"{len(answers)} nodes combined their shares; unmasking needs {self.needed}"
        values = dict(described)
        values.update({f"from/{n}": a[f"to/{refresher}"] for n, a in answers.items()})
        request = _ask(refresher, REFRESH, values)
        request.content[MASKED] = ArrayRecord({MASKED: Array(masked.astype(np.uint32))})
        replies = self.send([request])
        if not replies or replies[0].has_error():
            reason = replies[0].error.reason if replies else "no reply"
            return f"the refresher (node {refresher}) failed: {reason}"
        arrays = replies[0].content.array_records.get(ARRAYS)
        if arrays is None or key_of(arrays) != self.key:
            return f"the refresher (node {refresher}) sent no ciphertext under the run's key"
        started = time.perf_counter()
        try:
            self.buffer.add(offset_chunks(arrays), 1.0)
        except ValueError as error:
            return f"the refresher's ciphertext: {error}"
        finally:
            self.costs["aggregate_seconds"] += time.perf_counter() - started
        self.note(replies[0].content.metric_records.get(METRICS, {}))
        return None

    def round_costs(self, sent: int) -> dict[str, Any]:
        out = super().round_costs(sent)
        out["buffers_waiting"] = len(self.closed)  # full, not yet unmasked
        return out

    @staticmethod
    def _zero_costs() -> dict[str, Any]:
        out = OffsetAggregator._zero_costs()
        out["encryption"] = (
            "one-time masks mod p, Shamir-shared among the clients (no single key holder); "
            "a refresher encrypts each buffer's step into the offset"
        )
        return out


def client_limit(step: float, block: int) -> float:
    """The largest |Δ| a client may send: the sum of a buffer of ``block`` updates, each
    rounded to a multiple of ``step``, stays within ±p/2."""
    return (shares.PRIME // 2 // block - 1) * step
