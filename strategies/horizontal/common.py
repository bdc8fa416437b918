"""What both drivers of the horizontal family share, synchronous (:mod:`.family`) and
asynchronous (:mod:`.async_family`): the data and the initial model, the keys, the
node-side handlers, the warm-up, and evaluating the global model."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from flwr.app import ArrayRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedpriv.config import ExperimentConfig
from fedpriv.crypto.records import Layout
from fedpriv.data.federated import FederatedData
from fedpriv.errors import ConfigError
from fedpriv.runtime.engine_partitions import engine_partitions
from fedpriv.runtime.models import evaluate_arrays, initial_arrays
from fedpriv.strategies.base import Handler, RunContext, Setup, Strategy
from fedpriv.strategies.horizontal.aggregators import input_layer_problem
from fedpriv.strategies.horizontal.client import ARRAYS, METRICS, HorizontalClient
from fedpriv.strategies.horizontal.specs import HORIZONTAL_STRATEGIES, HorizontalSpec

log = logging.getLogger("fedpriv")


class HorizontalDriver(Strategy):
    """The horizontal family's shared server side; a driver adds its round."""

    family = "horizontal"
    strategies = HORIZONTAL_STRATEGIES
    resumable = True

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self.spec = cast(HorizontalSpec, config.strategy)
        self.weight_key = config.privacy.weight_key()
        #: The global model (the initial one until :meth:`start`, or a checkpoint's).
        self.arrays = ArrayRecord()
        #: The seeded initial model and the data it is evaluated on, from prepare().
        self.initial = ArrayRecord()
        self.data: FederatedData | None = None
        #: Each node's partition, learned at the warm-up (None: there was none).
        self.partition_of: dict[int, int] | None = None

    @classmethod
    def config_problems(cls, config: ExperimentConfig) -> list[str]:
        """Whether the privacy settings fit this strategy's sampling and client count,
        and whether the server can place a feature partition's input layers side by side."""
        out = [
            f"privacy.{field}={_get_path(config.privacy, field)!r} {rule}"
            for field, rule in config.privacy.problems_for(
                num_clients=config.num_clients, strategy=config.strategy
            )
        ]
        return out + _feature_partition_problems(config)

    def prepare(self) -> Setup:
        """Partition the data, build the initial model, make the keys."""
        config = self.config
        data = config.federated_data()
        config.privacy.check_clients([len(p) for p in data.parts])
        self.data = data
        self.initial = initial = initial_arrays(config, data)
        if data.masks is not None and (
            problem := input_layer_problem(initial, math.prod(data.dataset.input_shape))
        ):
            raise ConfigError(problem)
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

    def client_mods(self, secret: bytes | None, initial: ArrayRecord | None = None) -> list[Any]:
        """The crypto mods of a ClientApp holding ``secret`` (the clients' key)."""
        config = self.config
        if initial is None:
            initial = initial_arrays(config, config.federated_data())
        return config.crypto.client_mods(config, secret, Layout.of(initial))

    def node_mods(self, bundle: str | None) -> list[Any]:
        """The clients' shared CKKS secret, from the device's bundle (``client.ctx``)."""
        if self.config.crypto.name == "none":
            return []
        return self.client_mods(self.config.crypto.load_keys(server=False, directory=bundle))

    def client_handlers(self) -> Mapping[str, Handler]:
        client = HorizontalClient(self.config)
        return {
            "train": client.train,
            "evaluate": client.evaluate,
            "query.ready": client.ready,
            **self.config.crypto.client_handlers(self.config),
        }

    def warm_up(
        self, grid: Grid, ctx: RunContext, first_cohort: Callable[[], list[int]]
    ) -> list[Message]:
        """Start ClientApps before the first round, so a round deadline (or a simulated
        fleet's clock) measures the work, not the start-up (seconds in a simulation's
        first message), and learn each node's partition, for sampling the same clients
        from the same seed. Where the engine assigned the partitions (a simulation),
        only the first round's cohort (``first_cohort()``, drawn once the partitions
        are known) is contacted: the rest of the population costs nothing until it is
        sampled. Elsewhere every node is, and names its partition in its reply.
        Returns the replies."""
        known = engine_partitions(grid)
        if known is not None:
            self.partition_of = known
            nodes = first_cohort()
        else:
            nodes = list(grid.get_node_ids())
        replies = ctx.exchange.first_contact(grid, nodes, "query.ready")
        ready = [reply for reply in replies if not reply.has_error()]
        log.info("%d of %d nodes ready before the first round", len(ready), len(nodes))
        if known is None:
            self.partition_of = {
                r.metadata.src_node_id: int(r.content.metric_records[METRICS]["partition-id"])  # type: ignore[arg-type]
                for r in ready
            }
        return replies

    def evaluate(
        self, grid: Grid, ctx: RunContext, live: Iterable[int] = ()
    ) -> dict[str, float | None]:
        """Accuracy and loss of the global model on the held-out test split.

        The server evaluates when it can read the model; under encryption it asks a
        key holder, which decrypts and evaluates: the lowest-ID node of ``live`` (those
        whose updates this round accepted: alive, and holding the run's key; a node that
        died mid-run stays listed by the SuperLink until its heartbeat lapses), else of
        every node.
        """
        if self.config.crypto.server_reads_model:
            assert self.data is not None, "prepare() comes first"
            return dict(evaluate_arrays(self.config, self.data, self.arrays))
        nodes = set(grid.get_node_ids())
        node = min((nodes & set(live)) or nodes)
        message = Message(
            content=RecordDict({ARRAYS: self.arrays}),
            dst_node_id=node,
            message_type=MessageType.EVALUATE,
        )
        replies = ctx.exchange.send_and_receive(grid, [message])
        if not replies or replies[0].has_error():
            reason = replies[0].error.reason if replies else "no reply"
            log.warning("evaluation by key holder node %s failed: %s", node, reason)
            return {"accuracy": None, "loss": None}
        metrics = replies[0].content.metric_records[METRICS]
        return {"accuracy": float(metrics["accuracy"]), "loss": float(metrics["loss"])}  # type: ignore[arg-type]


def _feature_partition_problems(config: ExperimentConfig) -> list[str]:
    """``partition=features`` needs a server that reads the clients' models and
    publishes the merge as made: plaintext, no central DP, synchronous rounds."""
    if not config.partition.splits_features:
        return []
    out = []
    why = "partition=features places the clients' input layers side by side on the server"
    if not config.crypto.server_reads_model:
        out.append(f"crypto={config.crypto.name} hides the models: {why}; use crypto=none")
    if config.privacy.central_dp() is not None:
        out.append(
            f"privacy={config.privacy.name}: {why} after the noise, which would undo "
            "central DP; use privacy=none or dp_sgd"
        )
    if getattr(config.strategy, "asynchronous", False):
        out.append(f"strategy={config.strategy.name} is asynchronous: {why} each round")
    return out


def client_entry(reply: Message) -> dict[str, object]:
    """One client's line in a round record: its node and its reported metrics."""
    metrics = dict(next(iter(reply.content.metric_records.values())))
    return {"node_id": reply.metadata.src_node_id, **metrics}


def _get_path(spec: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        spec = getattr(spec, part)
    return spec
