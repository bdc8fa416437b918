"""The horizontal family: clients hold different samples of the same features.

This is its synchronous driver. Each round fedpriv samples the clients (seeded:
:mod:`.sampling`), the wrapped Flower strategy builds their messages
(``configure_train``), they train locally from the global model, and the crypto
scheme's aggregator checks and combines the replies: in plaintext the Flower strategy's
``aggregate_train``, under CKKS a sum of ciphertexts. The new global model is then
evaluated on the held-out test split (by the server, or by a key holder when the server
cannot read it). Asynchronous strategies have their own driver (:mod:`.async_family`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedpriv.config import ExperimentConfig
from fedpriv.crypto import Aggregator, Interactive
from fedpriv.crypto.records import Layout
from fedpriv.privacy.central import released_noise_multiplier
from fedpriv.privacy.ledger import declined_reason
from fedpriv.runtime.checkpoint import CheckpointError, flower_state, restore_flower_state
from fedpriv.strategies.base import RoundReport, RunContext, Strategy
from fedpriv.strategies.horizontal.aggregators import inputs_side_by_side
from fedpriv.strategies.horizontal.async_family import AsyncHorizontal
from fedpriv.strategies.horizontal.asynchronous import AsyncSpec
from fedpriv.strategies.horizontal.client import ARRAYS, METRICS
from fedpriv.strategies.horizontal.common import HorizontalDriver, client_entry
from fedpriv.strategies.horizontal.sampling import SampledGrid, sample_round

log = logging.getLogger("fedpriv")


class Horizontal(HorizontalDriver):
    """FedAvg and its family, each aggregate done by a Flower strategy."""

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self.flower = self.flower_strategy()
        self.aggregator: Aggregator | None = None
        self.planner = config.selection.planner()

    @classmethod
    def create(cls, config: ExperimentConfig) -> Strategy:
        """The family's driver for ``config``: this one, or the asynchronous one for an
        asynchronous strategy (``fedasync``...)."""
        if isinstance(config.strategy, AsyncSpec):
            return AsyncHorizontal(config)
        return cls(config)

    def flower_strategy(self) -> Any:
        """The Flower strategy that samples clients and aggregates (privacy-wrapped)."""
        config = self.config
        return config.privacy.wrap_strategy(
            self.spec.build(weighted_by_key=self.weight_key),
            self.spec.sampled(config.num_clients),
        )

    def checkpoint_state(self) -> dict[str, Any]:
        """The global model (ciphertexts under CKKS) and the Flower strategy's changing
        state (FedAdam's moments, FedAvgM's momentum, a central-DP wrapper's clipping
        norm): named attributes, never the strategy object or its noise generator."""
        return {"arrays": self.arrays, "flower": flower_state(self.flower)}

    def restore_state(self, state: dict[str, Any] | None) -> None:
        """Take back :meth:`checkpoint_state` (None: a run with no checkpoint yet)."""
        if state is None:
            return
        if not isinstance(state, dict) or not isinstance(state.get("arrays"), ArrayRecord):
            raise CheckpointError("the checkpoint's horizontal state has no global model")
        self.arrays = state["arrays"]
        restore_flower_state(self.flower, state.get("flower", []))

    def train_settings(self) -> ConfigRecord:
        """The train message's config, under the names Flower's own apps read
        (docs/interop.md): a ClientApp that is not fedpriv's trains with the run's
        settings; fedpriv's reads them from the run config."""
        train = self.config.train
        return ConfigRecord(
            {"lr": train.lr, "local-epochs": train.local_epochs, "batch-size": train.batch_size}
        )

    def start(self, grid: Grid, ctx: RunContext) -> None:
        selection = self.config.selection
        sampled = self.spec.sampled(self.config.num_clients) < self.config.num_clients
        if selection.round_deadline_s is not None or sampled or selection.device_profiles != "none":
            # The replies' timed probe steps are each device's first speed measurement.
            cohort = functools.partial(self.sample, grid, ctx.first_round)
            self.planner.observe(self.warm_up(grid, ctx, cohort))
        if not len(self.arrays):  # a resumed run already holds its global model
            self.arrays = self.initial
        self.aggregator = self.config.crypto.aggregator(
            self.flower,
            weight_key=self.weight_key,
            strategy=self.spec,
            layout=Layout.of(self.initial),  # a resumed run's arrays may be ciphertexts
            public=ctx.server_key,
        )
        if isinstance(self.aggregator, Interactive):
            self.aggregator.open(
                lambda messages: ctx.exchange.send_and_receive(grid, messages),
                nodes=sorted(grid.get_node_ids()),
                per_round=self.spec.sampled(self.config.num_clients),
                num_clients=self.config.num_clients,
            )

    def sample(self, grid: Grid, server_round: int) -> list[int]:
        """The nodes that train in ``server_round`` (seeded, in partition order)."""
        count = self.spec.sampled(self.config.num_clients)
        return sample_round(grid, count, self.config.seed, server_round, self.partition_of)

    def place_inputs(self, merged: ArrayRecord, accepted: list[Message]) -> ArrayRecord:
        """``merged`` as the round's global model: with ``partition=features``, its input
        layer's columns placed side by side from the clients that own them
        (:func:`.inputs_side_by_side`); otherwise as the rule made it."""
        masks = self.data.masks if self.data is not None else None
        if masks is None:
            return merged
        owned = [
            (
                reply.content.array_records[ARRAYS],
                masks[int(reply.content.metric_records[METRICS]["partition-id"])],  # type: ignore[arg-type]
            )
            for reply in accepted
        ]
        return inputs_side_by_side(merged, owned)

    def round(self, server_round: int, grid: Grid, ctx: RunContext) -> RoundReport:
        assert self.aggregator is not None, "start() runs before the first round"
        chosen = self.sample(grid, server_round)
        sent = self.flower.configure_train(
            server_round, self.arrays, self.train_settings(), cast(Grid, SampledGrid(grid, chosen))
        )
        # In the order drawn: Flower shuffles what it is shown with the global ``random``.
        sent = sorted(sent, key=lambda message: chosen.index(message.metadata.dst_node_id))
        messages = self.planner.plan(sent)
        if isinstance(self.aggregator, Interactive):
            self.aggregator.stamp(server_round, messages)
        replies = ctx.exchange.send_and_receive(
            grid, messages, self.config.selection.round_deadline_s
        )
        stragglers = self.planner.stragglers(messages, replies)
        if stragglers:
            log.warning("round %d: no reply in time from nodes %s", server_round, stragglers)
        self.planner.observe(replies)
        accepted = []
        for reply in replies:
            if (declined := declined_reason(reply)) is not None:
                ctx.reports.decline(reply, declined)
                continue
            self.config.privacy.weigh(reply)
            reason = self.aggregator.check(reply, self.arrays)
            if reason is None:
                accepted.append(reply)
            else:
                ctx.exchange.reject(reply, reason)
        extra, updated = {}, False
        if accepted:
            result = self.aggregator.aggregate(server_round, accepted, self.arrays, len(messages))
            for reply, reason in result.rejected:
                ctx.exchange.reject(reply, reason)
            rejected = {id(reply) for reply, _ in result.rejected}
            accepted = [reply for reply in accepted if id(reply) not in rejected]
            if result.arrays is not None:
                self.arrays, updated = self.place_inputs(result.arrays, accepted), True
                ctx.ledger.released(released_noise_multiplier(self.flower))
            extra = result.record
        if stragglers:
            extra = {**extra, "stragglers": stragglers}
        holders = {reply.metadata.src_node_id for reply in accepted}  # alive, with the key
        evaluation = self.evaluate(grid, ctx, live=holders)
        return RoundReport(
            server_round=server_round,
            accuracy=evaluation["accuracy"],
            loss=evaluation["loss"],
            clients=[client_entry(reply) for reply in accepted],
            extra=extra,
            contributors=len(accepted) if updated else 0,
        )
