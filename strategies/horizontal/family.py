"""The horizontal family: clients hold different samples of the same features.

Each round, the wrapped Flower strategy picks clients (``configure_train``), they train
locally from the global model, replies are checked, and the Flower strategy aggregates
them (``aggregate_train``). The server then evaluates the new global model on the
held-out test split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedpriv.config import ExperimentConfig
from fedpriv.data.federated import federate
from fedpriv.privacy.accounting import planned_steps
from fedpriv.privacy.ledger import declined_reason
from fedpriv.runtime.node import node_counter, partition_id
from fedpriv.runtime.records import check_update
from fedpriv.training import seed_for
from strategies.base import Handler, RoundReport, RunContext, Strategy
from strategies.horizontal.specs import HORIZONTAL_STRATEGIES, HorizontalSpec

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"


class HorizontalClient:
    """Node side: local training from the global model on this node's partition."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config

    def train(self, msg: Message, context: Context) -> Message:
        cfg = self.config
        data = federate(cfg.data, cfg.partition, cfg.num_clients, cfg.seed)
        pid = partition_id(context)
        x, y = data.client(pid)
        model = cfg.privacy.prepare_model(
            cfg.model.build(data.dataset.input_shape, data.dataset.num_classes)
        )
        model.load_state_dict(msg.content.array_records[ARRAYS].to_torch_state_dict())
        settings = msg.content.config_records[CONFIG]
        server_round = int(settings["server-round"])  # type: ignore[arg-type]
        stats, privacy_metrics = cfg.privacy.train(
            model,
            x,
            y,
            cfg.train,
            seed=seed_for(cfg.seed, server_round, pid),
            proximal_mu=float(settings.get("proximal-mu", 0.0)),  # type: ignore[arg-type]
            planned_steps=planned_steps(cfg, len(y)),
        )
        rounds_trained = node_counter(context, "rounds_trained")
        metrics = MetricRecord(
            {
                "num-examples": stats.num_examples,
                "partition-id": pid,
                "train-loss": stats.loss,
                "train-accuracy": stats.accuracy,
                "train-seconds": stats.seconds,
                "steps": stats.steps,
                "rounds-trained": rounds_trained,
                **privacy_metrics,
            }
        )
        reply = RecordDict({ARRAYS: ArrayRecord(model.state_dict()), METRICS: metrics})
        return Message(content=reply, reply_to=msg)


class Horizontal(Strategy):
    """FedAvg and its family, each aggregate done by a Flower strategy."""

    family = "horizontal"
    strategies = HORIZONTAL_STRATEGIES

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self.spec = cast(HorizontalSpec, config.strategy)
        self.weight_key = config.privacy.weight_key()
        self.flower = config.privacy.wrap_strategy(
            self.spec.build(config.num_clients, weighted_by_key=self.weight_key),
            self.spec.sampled(config.num_clients),
        )
        self.arrays = ArrayRecord()

    def client_handlers(self) -> Mapping[str, Handler]:
        return {"train": HorizontalClient(self.config).train}

    def start(self, grid: Grid, ctx: RunContext) -> None:
        self.arrays = ctx.initial_arrays()

    def round(self, server_round: int, grid: Grid, ctx: RunContext) -> RoundReport:
        messages = self.flower.configure_train(server_round, self.arrays, ConfigRecord(), grid)
        accepted = []
        for reply in ctx.send_and_receive(grid, messages):
            if (declined := declined_reason(reply)) is not None:
                ctx.decline(reply, declined)
                continue
            reason = check_update(reply, self.arrays, self.weight_key)
            if reason is None:
                accepted.append(reply)
            else:
                ctx.reject(reply, reason)
        if accepted:
            arrays, _ = self.flower.aggregate_train(server_round, accepted)
            if arrays is not None:
                self.arrays = cast_like(arrays, self.arrays)
                ctx.ledger.released()
        evaluation = ctx.evaluate(self.arrays)
        return RoundReport(
            server_round=server_round,
            accuracy=evaluation["accuracy"],
            loss=evaluation["loss"],
            clients=[client_entry(reply) for reply in accepted],
        )


def cast_like(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """``arrays`` in the dtypes of ``reference``. Flower's FedOpt family computes in
    float64; the global model keeps its own dtypes so clients' replies match it and
    messages do not double in size."""
    return ArrayRecord(
        {
            name: array
            if array.dtype == reference[name].dtype
            else Array(array.numpy().astype(reference[name].numpy().dtype))
            for name, array in arrays.items()
        }
    )


def client_entry(reply: Message) -> dict[str, object]:
    """One client's line in a round record: its node and its reported metrics."""
    metrics = dict(next(iter(reply.content.metric_records.values())))
    return {"node_id": reply.metadata.src_node_id, **metrics}
