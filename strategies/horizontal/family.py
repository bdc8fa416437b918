"""The horizontal family: clients hold different samples of the same features.

Each round, the wrapped Flower strategy picks clients (``configure_train``), they train
locally from the global model, and the crypto scheme's aggregator checks and combines
the replies: in plaintext the Flower strategy's ``aggregate_train``, under CKKS a sum of
ciphertexts. The new global model is then evaluated on the held-out test split (by the
server, or by a key holder when the server cannot read it).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator, Mapping
from typing import Any, cast

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import strategy_utils
from torch import nn

from fedpriv.config import ExperimentConfig
from fedpriv.crypto import Aggregator
from fedpriv.crypto.records import Layout
from fedpriv.data.federated import FederatedData
from fedpriv.node import node_counter, node_data, partition_id
from fedpriv.privacy.accounting import planned_steps
from fedpriv.privacy.central import released_noise_multiplier
from fedpriv.privacy.ledger import declined_reason
from fedpriv.runtime.checkpoint import CheckpointError, flower_state, restore_flower_state
from fedpriv.runtime.models import evaluate_arrays, fresh_model, initial_arrays
from fedpriv.selection import MAX_STEPS, WORK_SECONDS
from fedpriv.strategies.base import Handler, RoundReport, RunContext, Setup, Strategy
from fedpriv.strategies.horizontal.asynchronous import AsyncSpec
from fedpriv.strategies.horizontal.specs import HORIZONTAL_STRATEGIES, HorizontalSpec
from fedpriv.training import evaluate, seed_for

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
#: Train config key: EASGD's elastic rate; the node keeps its own model (ELASTIC_MODEL).
ELASTIC_RHO = "elastic-rho"
ELASTIC_MODEL = "fedpriv.elastic"
#: Mixed into the run's seed for the server's client sampling.
CLIENT_SAMPLING = 2

log = logging.getLogger("fedpriv")


class HorizontalClient:
    """Node side: local training from the global model on this node's partition."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config

    def model(self, msg: Message) -> tuple[FederatedData, nn.Module]:
        """This run's data, and the model in ``msg`` (built as the privacy mode trains it)."""
        cfg = self.config
        data = cfg.federated_data()
        model = fresh_model(cfg, data.dataset)
        model.load_state_dict(msg.content.array_records[ARRAYS].to_torch_state_dict())
        return data, model

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Accuracy and loss of the received model on the held-out test split. The
        server asks a key holder when it cannot read the model itself (CKKS)."""
        data, model = self.model(msg)
        metrics = evaluate(model, data.dataset.x_test, data.dataset.y_test)
        content = RecordDict(
            {METRICS: MetricRecord({**metrics, "num-examples": len(data.dataset.y_test)})}
        )
        return Message(content=content, reply_to=msg)

    def ready(self, msg: Message, context: Context) -> Message:
        """Start the ClientApp (its first message does) and time a few SGD steps on random
        inputs of the data's shape: warm, and the device's speed without touching its data."""
        cfg = self.config
        pid = partition_id(context)
        data = cfg.federated_data()
        shape, classes = data.dataset.input_shape, data.dataset.num_classes
        model = cfg.model.build(shape, classes)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
        inputs = torch.randn(cfg.train.batch_size, *shape)
        labels = torch.randint(classes, (cfg.train.batch_size,))
        steps = cfg.selection.probe_steps
        for step in range(steps + 1):  # the first, untimed, pays torch's one-off set-up
            if step == 1:
                started = time.perf_counter()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
        seconds = time.perf_counter() - started
        time.sleep(cfg.selection.simulated_wait(pid, cfg.num_clients, seconds))
        metrics = MetricRecord(
            {"partition-id": pid, "steps": steps, WORK_SECONDS: time.perf_counter() - started}
        )
        return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)

    def train(self, msg: Message, context: Context) -> Message:
        cfg = self.config
        data, model = self.model(msg)
        pid = partition_id(context)
        x, y = node_data(context, data)
        if pid in cfg.adversary.attackers(cfg.num_clients, cfg.seed):
            y = cfg.adversary.poison_labels(y, data.dataset.num_classes)
        settings = msg.content.config_records[CONFIG]
        server_round = int(settings["server-round"])  # type: ignore[arg-type]
        max_steps = settings.get(MAX_STEPS)
        rho = settings.get(ELASTIC_RHO)
        if rho is not None:  # EASGD: train this node's own model (the center at first)
            center = {name: value.clone() for name, value in model.state_dict().items()}
            if (own := context.state.array_records.get(ELASTIC_MODEL)) is not None:
                model.load_state_dict(own.to_torch_state_dict())
        started = time.perf_counter()
        stats, privacy_metrics = cfg.privacy.train(
            model,
            x,
            y,
            cfg.train,
            seed=seed_for(cfg.seed, server_round, pid),
            proximal_mu=float(settings.get("proximal-mu", 0.0)),  # type: ignore[arg-type]
            planned_steps=planned_steps(cfg, len(y)),
            max_steps=None if max_steps is None else int(max_steps),  # type: ignore[arg-type]
        )
        # A simulated slow device (selection.device_profiles) waits out the difference.
        time.sleep(cfg.selection.simulated_wait(pid, cfg.num_clients, stats.seconds))
        trained = model.state_dict()
        if rho is not None:
            trained = elastic_exchange(trained, center, context, float(rho))  # type: ignore[arg-type]
        rounds_trained = node_counter(context, "rounds_trained")
        metrics = MetricRecord(
            {
                "num-examples": stats.num_examples,
                "partition-id": pid,
                "train-loss": stats.loss,
                "train-accuracy": stats.accuracy,
                "train-seconds": stats.seconds,
                WORK_SECONDS: time.perf_counter() - started,
                "steps": stats.steps,
                "rounds-trained": rounds_trained,
                **privacy_metrics,
            }
        )
        reply = RecordDict({ARRAYS: ArrayRecord(trained), METRICS: metrics})
        return Message(content=reply, reply_to=msg)


class Horizontal(Strategy):
    """FedAvg and its family, each aggregate done by a Flower strategy."""

    family = "horizontal"
    strategies = HORIZONTAL_STRATEGIES
    resumable = True

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self.spec = cast(HorizontalSpec, config.strategy)
        self.weight_key = config.privacy.weight_key()
        self.flower = self.flower_strategy()
        self.arrays = ArrayRecord()
        #: The seeded initial model and the data it is evaluated on, from prepare().
        self.initial = ArrayRecord()
        self.data: FederatedData | None = None
        self.aggregator: Aggregator | None = None
        self.planner = config.selection.planner()
        #: Each node's partition (learned at warm-up), when clients are sampled.
        self.partition_of: dict[int, int] | None = None

    @classmethod
    def create(cls, config: ExperimentConfig) -> Strategy:
        """This family, or AsyncHorizontal for an asynchronous strategy (``fedasync``...)."""
        from fedpriv.strategies.horizontal.async_family import AsyncHorizontal

        if isinstance(config.strategy, AsyncSpec) and not issubclass(cls, AsyncHorizontal):
            return AsyncHorizontal(config)
        return cls(config)

    def flower_strategy(self) -> Any:
        """The Flower strategy that samples clients and aggregates (privacy-wrapped)."""
        config = self.config
        return config.privacy.wrap_strategy(
            self.spec.build(config.num_clients, weighted_by_key=self.weight_key),
            self.spec.sampled(config.num_clients),
        )

    @classmethod
    def config_problems(cls, config: ExperimentConfig) -> list[str]:
        """Whether the privacy settings fit this strategy's sampling and client count."""
        return [
            f"privacy.{field}={_get_path(config.privacy, field)!r} {rule}"
            for field, rule in config.privacy.problems_for(
                num_clients=config.num_clients, strategy=config.strategy
            )
        ]

    def prepare(self) -> Setup:
        """Partition the data, build the initial model, make the keys."""
        config = self.config
        data = config.federated_data()
        config.privacy.check_clients([len(p) for p in data.parts])
        self.data = data
        self.initial = initial = initial_arrays(config, data)
        if config.engine.keys_provisioned:
            # Deployment: key files from `fedpriv keys init`; the server reads only its own.
            server_key = config.crypto.load_keys(server=True)
            mods: list[Any] = []
        else:
            # Keys are made here, on the clients' side of the simulation: the secret goes
            # into the ClientApp's mods only; the ServerApp gets the public context.
            keys = config.crypto.make_keys()
            server_key = keys.public if keys else None
            mods = self.client_mods(keys.secret if keys else None, initial)
        clients = {
            "num_clients": config.num_clients,
            "num_examples": [len(p) for p in data.parts],
            "label_histograms": data.label_histograms(),
            "test_examples": len(data.dataset.y_test),
            "adversaries": config.adversary.attackers(config.num_clients, config.seed),
        }
        return Setup(clients=clients, client_mods=mods, server_key=server_key)

    def evaluate(self, grid: Grid, ctx: RunContext) -> dict[str, float | None]:
        """Accuracy and loss of the global model on the held-out test split.

        The server evaluates when it can read the model; under encryption it asks a
        key holder (the node with the lowest ID), which decrypts and evaluates.
        """
        if self.config.crypto.server_reads_model:
            assert self.data is not None, "prepare() comes first"
            return dict(evaluate_arrays(self.config, self.data, self.arrays))
        node = min(grid.get_node_ids())
        message = Message(
            content=RecordDict({"arrays": self.arrays}),
            dst_node_id=node,
            message_type=MessageType.EVALUATE,
        )
        replies = ctx.send_and_receive(grid, [message])
        if not replies or replies[0].has_error():
            reason = replies[0].error.reason if replies else "no reply"
            log.warning("evaluation by key holder node %s failed: %s", node, reason)
            return {"accuracy": None, "loss": None}
        metrics = replies[0].content.metric_records["metrics"]
        return {"accuracy": float(metrics["accuracy"]), "loss": float(metrics["loss"])}  # type: ignore[arg-type]

    def client_mods(self, secret: bytes | None, initial: ArrayRecord | None = None) -> list[Any]:
        """The crypto mods of a ClientApp holding ``secret`` (the clients' key)."""
        config = self.config
        if initial is None:
            data = config.federated_data()
            initial = initial_arrays(config, data)
        return config.crypto.client_mods(config, secret, Layout.of(initial))

    def client_handlers(self) -> Mapping[str, Handler]:
        client = HorizontalClient(self.config)
        return {"train": client.train, "evaluate": client.evaluate, "query.ready": client.ready}

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

    def start(self, grid: Grid, ctx: RunContext) -> None:
        selection = self.config.selection
        sampled = self.spec.sampled(self.config.num_clients) < self.config.num_clients
        if selection.round_deadline_s is not None or sampled or selection.device_profiles != "none":
            self.warm_up(grid, ctx)
        if not len(self.arrays):  # a resumed run already holds its global model
            self.arrays = self.initial
        self.aggregator = self.config.crypto.aggregator(
            self.flower,
            weight_key=self.weight_key,
            strategy=self.spec,
            layout=Layout.of(self.arrays),
            public=ctx.server_key,
        )

    def warm_up(self, grid: Grid, ctx: RunContext) -> None:
        """Start every node's ClientApp before round 1, so a round deadline (or a
        simulated fleet's clock) measures the work, not the start-up (seconds in a
        simulation's first message); the replies' timed probe steps are each device's
        first speed measurement, and their partition IDs order the nodes for client
        sampling."""
        nodes = list(grid.get_node_ids())
        replies = ctx.first_contact(grid, nodes, "query.ready")
        self.planner.observe(replies)
        ready = [reply for reply in replies if not reply.has_error()]
        log.info("%d of %d nodes ready before round 1", len(ready), len(nodes))
        # Node IDs are random per run; sampling from them in partition order makes the
        # same seed pick the same clients in every run.
        self.partition_of = {
            r.metadata.src_node_id: int(r.content.metric_records[METRICS]["partition-id"])  # type: ignore[arg-type]
            for r in ready
        }

    def round(self, server_round: int, grid: Grid, ctx: RunContext) -> RoundReport:
        assert self.aggregator is not None, "start() runs before the first round"
        with seeded_sampling(self.config.seed, server_round):
            ordered = (
                grid if self.partition_of is None else PartitionOrderedGrid(grid, self.partition_of)
            )
            sent = self.flower.configure_train(
                server_round, self.arrays, ConfigRecord(), cast(Grid, ordered)
            )
        messages = self.planner.plan(list(sent))
        replies = ctx.send_and_receive(grid, messages, self.config.selection.round_deadline_s)
        stragglers = self.planner.stragglers(messages, replies)
        if stragglers:
            log.warning("round %d: no reply in time from nodes %s", server_round, stragglers)
        self.planner.observe(replies)
        accepted = []
        for reply in replies:
            if (declined := declined_reason(reply)) is not None:
                ctx.decline(reply, declined)
                continue
            reason = self.aggregator.check(reply, self.arrays)
            if reason is None:
                accepted.append(reply)
            else:
                ctx.reject(reply, reason)
        extra = {}
        if accepted:
            result = self.aggregator.aggregate(server_round, accepted, self.arrays, len(messages))
            for reply, reason in result.rejected:
                ctx.reject(reply, reason)
            rejected = {id(reply) for reply, _ in result.rejected}
            accepted = [reply for reply in accepted if id(reply) not in rejected]
            if result.arrays is not None:
                self.arrays = result.arrays
                ctx.ledger.released(released_noise_multiplier(self.flower))
            extra = result.record
        if stragglers:
            extra = {**extra, "stragglers": stragglers}
        evaluation = self.evaluate(grid, ctx)
        return RoundReport(
            server_round=server_round,
            accuracy=evaluation["accuracy"],
            loss=evaluation["loss"],
            clients=[client_entry(reply) for reply in accepted],
            extra=extra,
        )


def elastic_exchange(
    trained: dict[str, torch.Tensor],
    center: dict[str, torch.Tensor],
    context: Context,
    rho: float,
) -> dict[str, torch.Tensor]:
    """EASGD's elastic step on a node. The difference ``rho·(trained − center)`` pulls
    the node's own model toward the center it received (kept in ``context.state`` for
    its next exchange) and is what the center moves by: the reply is ``center + diff``,
    so the server adds the same difference with the opposite sign."""
    own, reply = {}, {}
    for name, value in trained.items():
        if not value.is_floating_point():
            own[name] = reply[name] = value
            continue
        diff = rho * (value - center[name])
        own[name], reply[name] = value - diff, center[name] + diff
    context.state[ELASTIC_MODEL] = ArrayRecord(own)
    return reply


@contextlib.contextmanager
def seeded_sampling(seed: int, server_round: int) -> Iterator[None]:
    """Flower's client sampling (``random.sample`` in its strategy utilities) from a
    generator seeded by the run's seed and the round: the global ``random`` is also
    drawn by Flower's heartbeat and retry threads, so it cannot repeat a run."""
    rng = random.Random(seed_for(seed, CLIENT_SAMPLING, server_round))
    original = strategy_utils.random
    strategy_utils.random = rng  # type: ignore[assignment]
    try:
        yield
    finally:
        strategy_utils.random = original


class PartitionOrderedGrid:
    """The grid, listing its nodes in partition order for Flower's client sampling
    (``random.sample`` over the list); everything else is the grid's own."""

    def __init__(self, grid: Grid, partition_of: dict[int, int]) -> None:
        self._grid = grid
        self._partition_of = partition_of

    def get_node_ids(self) -> list[int]:
        unknown = len(self._partition_of)  # nodes that did not answer the warm-up: last
        return sorted(
            self._grid.get_node_ids(),
            key=lambda node: (self._partition_of.get(node, unknown), node),
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _get_path(spec: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        spec = getattr(spec, part)
    return spec


def client_entry(reply: Message) -> dict[str, object]:
    """One client's line in a round record: its node and its reported metrics."""
    metrics = dict(next(iter(reply.content.metric_records.values())))
    return {"node_id": reply.metadata.src_node_id, **metrics}
