"""The asynchronous driver of the horizontal family: no barrier between clients.

Every node gets a train message as soon as it is idle (``grid.push_messages``); the
server pulls whatever replies have arrived (``grid.pull_messages``) and hands each one
to the strategy's rule (:mod:`strategies.horizontal.asynchronous`) in arrival order. A
slow device therefore delays only its own updates, which arrive stale: the rule weighs
them by how many model versions were applied since their base was sent.

Under CKKS (FedBuff only) the server never reads an update: the crypto scheme's
aggregator (:mod:`fedpriv.crypto.offset`) scales each encrypted update by the rule's
plaintext factor and adds it to an encrypted buffer, and a full buffer to the encrypted
offset that clients receive over the plaintext initial model.

A "round" here is an evaluation point: ``updates_per_round`` updates taken (default
one per client), after which the server evaluates the model while clients keep
training. ``time_budget_s`` is checked after every pull of replies.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedpriv.config import ExperimentConfig
from fedpriv.crypto.base import Interactive
from fedpriv.crypto.offset import OffsetAggregator
from fedpriv.crypto.records import Layout
from fedpriv.privacy.ledger import declined_reason
from fedpriv.records import check_update
from fedpriv.runtime.checkpoint import CheckpointError
from fedpriv.runtime.exchange import PULL_INTERVAL_S
from fedpriv.runtime.flower_wakeup import reply_doorbell
from fedpriv.strategies.base import RoundReport, RunContext
from fedpriv.strategies.horizontal.asynchronous import Arrival, AsyncSpec, ServerState
from fedpriv.strategies.horizontal.client import ARRAYS, CONFIG
from fedpriv.strategies.horizontal.common import HorizontalDriver, client_entry
from fedpriv.strategies.horizontal.sampling import partition_order, sampling_rng

log = logging.getLogger("fedpriv")


@dataclasses.dataclass(frozen=True)
class Dispatch:
    """A train message in flight: to which node, on which model version, since when."""

    node: int
    version: int
    sent_at: float


class AsyncHorizontal(HorizontalDriver):
    """FedAsync, FedBuff, EASGD and BMUF on Flower's grid, without a round barrier."""

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self.spec: AsyncSpec = cast(AsyncSpec, config.strategy)
        self.state: ServerState | None = None
        self.layout: Layout | None = None
        #: Under CKKS: the encrypted buffer and offset (None: plaintext updates).
        self.sealed: OffsetAggregator | None = None
        #: Train messages in flight by message ID.
        self.in_flight: dict[str, Dispatch] = {}
        #: The model each in-flight version was (updates are measured from it).
        self.bases: dict[int, np.ndarray] = {}
        #: Nodes whose privacy budget is spent: they get no more work. (Node IDs change
        #: when a run resumes; a spent node then declines its first message again.)
        self.retired: set[int] = set()
        #: Nodes whose reply failed this round: they wait for the next one (no retry loop).
        self.benched: set[int] = set()
        #: Train messages sent so far (each one's training seed).
        self.dispatched = 0
        self.updates_applied = 0
        self.dropped_stale = 0
        self.rng = sampling_rng(config.seed)

    def checkpoint_state(self) -> dict[str, Any]:
        """The model, the rule's state and the counters. Updates in flight are not
        kept: a resumed run sends every node fresh work. Under CKKS the model is the
        encrypted offset over the base; the encrypted buffer is not kept either."""
        return {
            "arrays": self.arrays,
            "server": None if self.state is None else dataclasses.asdict(self.state),
            "counters": [self.dispatched, self.updates_applied, self.dropped_stale],
            # The client-sampling generator (seeded from the config; no noise is drawn from it).
            "rng": self.rng.getstate(),
        }

    def restore_state(self, state: dict[str, Any] | None) -> None:
        """Take back :meth:`checkpoint_state` (None: a run with no checkpoint yet)."""
        if state is None:
            return
        try:
            self.arrays = state["arrays"]
            server = state["server"]
            if server is not None:
                buffer = [Arrival(**arrival) for arrival in server.pop("buffer")]
                self.state = ServerState(**server, buffer=buffer)
            self.dispatched, self.updates_applied, self.dropped_stale = map(int, state["counters"])
            self.rng.setstate(state["rng"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"the checkpoint's asynchronous state is malformed ({error})"
            ) from error

    def start(self, grid: Grid, ctx: RunContext) -> None:
        # Start the first nodes' ClientApps first, so no update is stale by a start-up.
        self.warm_up(grid, ctx, lambda: self.choose(grid, copy.copy(self.rng)))
        if not len(self.arrays):
            self.arrays = self.initial
        self.layout = Layout.of(self.initial)  # a resumed run's arrays may carry ciphertexts
        self.sealed = self.config.crypto.async_aggregator(
            layout=self.layout,
            public=ctx.server_key,
            weight_key=self.weight_key,
            strategy=self.spec,
            num_clients=self.config.num_clients,
        )
        if self.sealed is not None:
            try:
                self.sealed.restore(self.arrays)
            except ValueError as error:
                raise CheckpointError(f"the checkpoint's encrypted model: {error}") from error
        if isinstance(self.sealed, Interactive):  # masked updates: a key ceremony first
            self.sealed.open(
                lambda messages: ctx.exchange.send_and_receive(grid, messages),
                nodes=sorted(grid.get_node_ids()),
                per_round=self.config.num_clients,
                num_clients=self.config.num_clients,
            )
        if self.state is None:
            # Under CKKS the server holds no plaintext model: its rule state only counts.
            model = self.layout.flatten(self.arrays) if self.sealed is None else np.zeros(0)
            self.state = self.spec.start(model, self.config.num_clients)
        log.info(
            "asynchronous %s: %d clients training at a time, %d updates between evaluations",
            self.spec.name,
            self.spec.sampled(self.config.num_clients),
            self.spec.per_round(self.config.num_clients),
        )

    # -- sending -----------------------------------------------------------------
    def idle_nodes(self, grid: Grid) -> list[int]:
        """Nodes with no work in flight and budget left, in partition order."""
        nodes = partition_order(self.untasked(grid), self.partition_of)
        if self.sealed is not None:  # masked: only nodes of the key ceremony can mask
            nodes = [node for node in nodes if self.sealed.can_train(node)]
        resting = self.retired | self.benched
        return [node for node in nodes if node not in resting]

    def choose(self, grid: Grid, rng: random.Random) -> list[int]:
        """Idle nodes drawn from ``rng`` to fill ``fraction_train`` of the fleet."""
        free = self.spec.sampled(self.config.num_clients) - len(self.in_flight)
        idle = self.idle_nodes(grid)
        if free <= 0 or not idle:
            return []
        return rng.sample(idle, min(free, len(idle)))

    def dispatch(self, grid: Grid, ctx: RunContext) -> None:
        """Give idle nodes the current model, up to ``fraction_train`` of the fleet busy."""
        assert self.state is not None and self.layout is not None
        if self.sealed is not None and self.sealed.pending:
            return  # nodes stay idle until they have unmasked the full buffer
        chosen = self.choose(grid, self.rng)
        if not chosen:
            return
        version = self.state.version
        if self.sealed is None and version not in self.bases:
            self.bases[version] = self.layout.flatten(self.arrays)
        messages = []
        for node in chosen:
            self.dispatched += 1
            settings = ConfigRecord({"server-round": self.dispatched})
            content = RecordDict({ARRAYS: self.arrays, CONFIG: settings})
            message = Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)
            if isinstance(self.sealed, Interactive):
                self.sealed.stamp(self.dispatched, [message])
            messages.append(message)
        pushed, now = set(ctx.exchange.push(grid, messages)), time.monotonic()
        for message, node in zip(messages, chosen, strict=True):
            if message.metadata.message_id in pushed:
                self.in_flight[message.metadata.message_id] = Dispatch(node, version, now)
            else:  # the grid could not store it: try this node again next round
                log.warning("the train message to node %d could not be sent", node)
                self.benched.add(node)

    # -- receiving ---------------------------------------------------------------
    def receive(self, reply: Message, ctx: RunContext) -> dict[str, Any] | None:
        """Apply one reply; its line in the round record if the rule took it."""
        assert self.state is not None and self.layout is not None
        sent = self.in_flight.pop(reply.metadata.reply_to_message_id)
        if (declined := declined_reason(reply)) is not None:
            ctx.reports.decline(reply, declined)
            self.retired.add(sent.node)
            return None
        if self.sealed is not None:
            reason = self.sealed.check(reply)
        else:
            reason = check_update(reply, self.arrays, self.weight_key)
        if reason is not None:
            ctx.exchange.reject(reply, reason)
            self.benched.add(sent.node)
            return None
        staleness = self.state.version - sent.version
        if not self.spec.accepts(staleness):
            metrics = reply.content.metric_records["metrics"]
            ctx.reports.reported(reply.metadata.src_node_id, metrics)
            self.dropped_stale += 1
            log.info(
                "dropped an update from node %d: %d versions old > max_staleness=%d",
                sent.node,
                staleness,
                self.spec.max_staleness,
            )
            return None
        if self.sealed is not None:
            if (reason := self.take_sealed(reply, staleness)) is not None:
                ctx.exchange.reject(reply, reason)
                self.benched.add(sent.node)
                return None
        else:
            local = self.layout.flatten(next(iter(reply.content.array_records.values())))
            arrival = Arrival(base=self.bases[sent.version], local=local, staleness=staleness)
            if self.spec.receive(self.state, arrival):
                self.arrays = self.layout.unflatten(self.state.model)
        self.updates_applied += 1
        return {
            **client_entry(reply),
            "staleness": staleness,
            "staleness-weight": self.spec.weight(staleness),
            "version": self.state.version,
            "update": self.updates_applied,
            "elapsed": ctx.clock.elapsed(),
        }

    def take_sealed(self, reply: Message, staleness: int) -> str | None:
        """Scale an encrypted update into the buffer, and step when the buffer is full;
        why SEAL refused it, or None."""
        assert self.sealed is not None and self.state is not None
        factor = self.spec.update_factor(staleness, self.state.block)
        if (reason := self.sealed.take(reply, factor)) is not None:
            return reason
        if self.sealed.buffered >= self.state.block and self.sealed.step():
            self.advance()
        return None

    def advance(self) -> None:
        """The encrypted offset took a step: the next model version."""
        assert self.sealed is not None and self.state is not None
        self.state.version += 1
        self.arrays = self.sealed.model(self.initial)

    def settle(self, grid: Grid, force: bool = False) -> None:
        """Masked updates: once enough nodes have no train message in flight, have them
        unmask the full buffers (a node's two messages at once would race over its
        state). ``force``, or no message in flight: unmask with whoever is idle, or drop
        the buffer."""
        if self.sealed is None or not self.sealed.pending:
            return
        idle = self.untasked(grid)
        for _ in range(self.sealed.settle(idle, force=force or not self.in_flight)):
            self.advance()

    def untasked(self, grid: Grid) -> list[int]:
        """Nodes with no train message in flight, whether or not they may train again."""
        busy = {d.node for d in self.in_flight.values()}
        return [node for node in sorted(grid.get_node_ids()) if node not in busy]

    def buffered(self) -> int:
        """Updates taken but not yet applied."""
        assert self.state is not None
        return self.sealed.buffered if self.sealed is not None else len(self.state.buffer)

    def round(self, server_round: int, grid: Grid, ctx: RunContext) -> RoundReport:
        target = self.spec.per_round(self.config.num_clients)
        applied: list[dict[str, Any]] = []
        dropped_before, dispatched_before = self.dropped_stale, self.dispatched
        stop_reason = None
        self.benched = set()
        patience = self.config.engine.round_timeout_s
        last_update = time.monotonic()
        doorbell = reply_doorbell(grid)
        while len(applied) < target:
            mark = doorbell.mark()
            self.settle(grid)
            self.dispatch(grid, ctx)
            if not self.in_flight:
                if self.benched:  # every client that could train failed this round
                    log.warning("round %d: every reply failed; evaluating", server_round)
                else:
                    stop_reason = "no client is left to train (every budget is spent)"
                break
            replies, answered = ctx.exchange.pull(grid, set(self.in_flight))
            for reply in replies:
                entry = self.receive(reply, ctx)
                if entry is not None:
                    applied.append(entry)
                    last_update = time.monotonic()
            for message_id in answered & set(self.in_flight):  # screened out by the exchange
                self.benched.add(self.in_flight.pop(message_id).node)
            if answered:  # bases no message in flight was sent are not needed any more
                self.bases = {v: b for v, b in self.bases.items() if self.in_use(v)}
            if (stop_reason := ctx.clock.budget_reason()) is not None:
                break
            if time.monotonic() - last_update > patience:
                self.settle(grid, force=True)  # a buffer waiting on nodes that went silent
                log.warning(
                    "round %d: no usable update for engine.round_timeout_s=%g s; evaluating "
                    "after %d of %d",
                    server_round,
                    patience,
                    len(applied),
                    target,
                )
                break
            if not replies:
                doorbell.wait(mark, PULL_INTERVAL_S)
        assert self.state is not None
        self.settle(grid)  # a buffer that filled last steps the model evaluated next
        live = {int(entry["node_id"]) for entry in applied}
        if self.config.crypto.server_reads_model:
            if stop_reason is None:
                self.dispatch(grid, ctx)  # idle clients train while the server evaluates
            evaluation = self.evaluate(grid, ctx, live=live)
        else:
            # A key holder evaluates: one with no train message in flight, since a node's
            # two messages at once race over its state (its privacy ledger included).
            idle = set(self.untasked(grid))
            if idle:
                evaluation = self.evaluate(grid, ctx, live=(live & idle) or idle)
            else:
                log.warning("round %d: every node is training; not evaluated", server_round)
                evaluation = {"accuracy": None, "loss": None}
            if stop_reason is None:
                self.dispatch(grid, ctx)
        extra: dict[str, Any] = {
            "updates": self.updates_applied,
            "version": self.state.version,
            "dropped_stale": self.dropped_stale - dropped_before,
            "in_flight": len(self.in_flight),
        }
        # Late, not given up on: a reply that still comes is applied, however stale.
        late = time.monotonic() - self.config.engine.round_timeout_s
        if stragglers := sorted(d.node for d in self.in_flight.values() if d.sent_at < late):
            extra["stragglers"] = stragglers
        if self.sealed is not None:
            extra["crypto"] = self.sealed.round_costs(self.dispatched - dispatched_before)
        if self.buffered() and (stop_reason or server_round == self.config.rounds):
            log.info("%d buffered updates were not applied: the run ended", self.buffered())
        return RoundReport(
            server_round=server_round,
            accuracy=evaluation["accuracy"],
            loss=evaluation["loss"],
            clients=applied,
            extra=extra,
            stop_reason=stop_reason,
            contributors=len(applied),
        )

    def in_use(self, version: int) -> bool:
        """Whether a message in flight was sent the model of ``version``."""
        return version == self.state.version or any(  # type: ignore[union-attr]
            d.version == version for d in self.in_flight.values()
        )
