"""The horizontal family's node side: local training from the global model on this
node's partition, the warm-up probe, and evaluation by a key holder (CKKS)."""

from __future__ import annotations

import time
from typing import cast

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

from fedpriv.config import ExperimentConfig
from fedpriv.data.federated import FederatedData
from fedpriv.node import node_counter, node_data, partition_id
from fedpriv.privacy.accounting import planned_steps
from fedpriv.runtime.models import fresh_model
from fedpriv.selection import MAX_STEPS, WORK_SECONDS
from fedpriv.strategies.horizontal.specs import HorizontalSpec
from fedpriv.training import evaluate, placed, seed_for

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"


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
        metrics = evaluate(
            model, data.dataset.x_test, data.dataset.y_test, device=self.config.train.device
        )
        content = RecordDict(
            {METRICS: MetricRecord({**metrics, "num-examples": len(data.dataset.y_test)})}
        )
        return Message(content=content, reply_to=msg)

    def local_accuracy(self, model: nn.Module, data: FederatedData, pid: int) -> dict[str, float]:
        """``test-accuracy`` and ``test-loss`` of this client's trained model, before any
        merge, on the test split as this client sees it (only its own features with
        ``partition=features``): the "each holder alone" baseline. Named as swarm peers
        name their own model's score: a score on the public test split, which DP-SGD's
        ledger releases as post-processing."""
        x_test = data.own_features(pid, data.dataset.x_test)
        scores = evaluate(model, x_test, data.dataset.y_test, device=self.config.train.device)
        return {"test-accuracy": scores["accuracy"], "test-loss": scores["loss"]}

    def ready(self, msg: Message, context: Context) -> Message:
        """Start the ClientApp (its first message does) and time a few SGD steps on random
        inputs of the data's shape: warm, and the device's speed without touching its data."""
        cfg = self.config
        pid = partition_id(context)
        data = cfg.federated_data()
        shape, classes = data.dataset.input_shape, data.dataset.num_classes
        model = cfg.model.build(shape, classes)
        steps = cfg.selection.probe_steps
        with placed(model, cfg.train.device) as device:  # timed where training will run
            optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
            inputs = torch.randn(cfg.train.batch_size, *shape, device=device)
            labels = torch.randint(classes, (cfg.train.batch_size,), device=device)
            for step in range(steps + 1):  # the first, untimed, pays torch's one-off set-up
                if step == 1:
                    started = time.perf_counter()
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(inputs), labels).backward()
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the queued steps are part of the time
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
        spec = cast(HorizontalSpec, cfg.strategy)
        local = spec.local_start(model, context)
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
        trained = spec.local_reply(model.state_dict(), local, context)
        if cfg.train.local_accuracy:
            privacy_metrics = {**privacy_metrics, **self.local_accuracy(model, data, pid)}
        rounds_trained = node_counter(context, "rounds_trained")
        metrics = MetricRecord(
            {
                "num-examples": stats.num_examples,
                "partition-id": pid,
                "train-loss": stats.loss,
                "train-accuracy": stats.accuracy,
                "train-seconds": stats.seconds,
                "train-gpu": int(stats.on_gpu),
                WORK_SECONDS: time.perf_counter() - started,
                "steps": stats.steps,
                "rounds-trained": rounds_trained,
                **privacy_metrics,
            }
        )
        reply = RecordDict({ARRAYS: ArrayRecord(trained), METRICS: metrics})
        return Message(content=reply, reply_to=msg)
