"""Node side of split learning: every party runs a bottom model; party 0 also the top.

Messages (the coordinator's side is :mod:`strategies.vertical.family`):

* ``query.ids`` / ``query.psi`` / ``query.align`` -- entity alignment: plain IDs, or
  masking and re-masking for the private set intersection, then the rows that every
  party holds (this party learns which of *its* rows they are, nothing else).
* ``train.step`` -- apply the gradient for the previous batch (recomputing that
  forward pass: nothing but the weights is kept between messages), then return the
  embedding of the next batch.
* ``train.top`` -- label owner: merge the embeddings, top model, loss, one SGD step,
  and the gradient for each party's embedding.
* ``evaluate.embed`` / ``evaluate.top`` -- the same, on the test entities, no update.

State lives in ``context.state``: weights and momentum, the PSI key, the alignment. On a
device with a ``state-dir`` each epoch's models are also kept there, to resume from.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

from fedpriv.config import ExperimentConfig
from fedpriv.crypto import psi
from fedpriv.data.vertical import LABEL_OWNER, PartyTable, vertical_tables
from fedpriv.errors import ConfigError
from fedpriv.node import partition_id
from fedpriv.runtime import node_store
from fedpriv.strategies.vertical.model import (
    build_bottom,
    build_top,
    noisy_gradient,
    optimizer,
    restore,
    save,
)
from fedpriv.strategies.vertical.settings import split_model, vertical_settings
from fedpriv.training import secret_seed

#: Record names shared with the coordinator and the CKKS mod.
EMBEDDING, SUM, GRADIENTS, BATCH, POINTS = (
    "embedding",
    "embedding-sum",
    "gradients",
    "batch",
    "points",
)
BOTTOM, TOP, ALIGNMENT, KEY = (
    "vertical.bottom",
    "vertical.top",
    "vertical.alignment",
    "vertical.psi",
)


#: What a party keeps on its own device to resume from (never sent to the coordinator).
PRIVATE = [BOTTOM, TOP]


def embedding_of(party: int) -> str:
    return f"{EMBEDDING}-{party}"


def values(array_record: ArrayRecord) -> np.ndarray:
    """The one array a single-array record holds."""
    return next(iter(array_record.values())).numpy()


def one_array(values: np.ndarray, name: str = "values") -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(values))})


class VerticalParty:
    """The handlers every vertical node registers (picklable: config only)."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.settings = vertical_settings(config)

    # -- this party's data ------------------------------------------------------
    def table(self, context: Context) -> tuple[int, PartyTable, int]:
        """This node's party index, its table, and the number of classes."""
        s, cfg = self.settings, self.config
        party = partition_id(context)
        if not 0 <= party < s.parties:
            raise ConfigError(
                f"partition-id={party} is outside [0, {s.parties}): start one node per party"
            )
        dataset, tables = vertical_tables(
            cfg.data, s.parties, s.split, s.columns, s.overlap, cfg.seed
        )
        return party, tables[party], dataset.num_classes

    def rows(self, context: Context, split: str) -> np.ndarray:
        """Aligned rows of this party's table (``train`` or ``test``)."""
        record = context.state.array_records.get(ALIGNMENT)
        if record is None:
            raise RuntimeError("no alignment yet: query.align must come before training")
        return record[split].numpy()

    # -- alignment ----------------------------------------------------------------
    def ids(self, msg: Message, context: Context) -> Message:
        """Plain IDs (``vertical.psi=false``): the coordinator sees them all."""
        party, table, _ = self.table(context)
        content = RecordDict(
            {
                "ids": ConfigRecord({"ids": list(table.ids)}),
                "metrics": MetricRecord({"party": party}),
            }
        )
        return Message(content=content, reply_to=msg)

    def psi(self, msg: Message, context: Context) -> Message:
        """``mask``: this party's IDs under a fresh secret key; ``remask``: another
        party's masked IDs under this party's key too."""
        party, table, _ = self.table(context)
        step = str(msg.content.config_records["config"]["step"])
        started = time.perf_counter()
        if step == "mask":
            key = psi.new_key()
            context.state[KEY] = ConfigRecord({"key": key})
            points = psi.mask_ids(table.ids, key)
        else:
            key = bytes(context.state.config_records[KEY]["key"])  # type: ignore[arg-type]
            points = psi.remask(values(msg.content.array_records[POINTS]), key)
        metrics = MetricRecord({"party": party, "seconds": time.perf_counter() - started})
        content = RecordDict({POINTS: one_array(points), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    def align(self, msg: Message, context: Context) -> Message:
        """Keep the rows every party holds, ordered by entity ID (each party knows the
        IDs of its own rows, so all reach the same order without sharing any)."""
        party, table, _ = self.table(context)
        after = node_store.resume_after(msg)
        if after > 0 and not node_store.load_private(context, after):
            raise ValueError(f"this party holds no models of its own after epoch {after}")
        members = values(msg.content.array_records["members"]).astype(np.int64)
        if len(members) and (members.min() < 0 or members.max() >= len(table.ids)):
            raise ValueError(f"alignment names rows outside this party's {len(table.ids)}")
        ordered = sorted(members.tolist(), key=lambda row: table.ids[row])
        train = np.array([r for r in ordered if not table.is_test[r]], np.int64)
        test = np.array([r for r in ordered if table.is_test[r]], np.int64)
        context.state[ALIGNMENT] = ArrayRecord({"train": Array(train), "test": Array(test)})
        if KEY in context.state.config_records:
            del context.state.config_records[KEY]  # alignment done: the mask key is not needed
        metrics = MetricRecord({"party": party, "train": len(train), "test": len(test)})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    # -- bottom model -----------------------------------------------------------------
    def bottom(self, context: Context) -> tuple[int, np.ndarray, nn.Module, torch.optim.SGD]:
        """This party's features and its bottom model and optimizer, as last saved."""
        party, table, _ = self.table(context)
        model = build_bottom(self.config, party, table.input_shape)
        opt = optimizer(model, self.config.train)
        if BOTTOM in context.state.array_records:
            restore(model, opt, context.state.array_records[BOTTOM])
        return party, table.x, model, opt

    def embed_rows(self, model: nn.Module, x: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
        """Embeddings of ``x`` with the configured noise, and the noise's relative norm."""
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        sigma = self.settings.embedding_noise
        if sigma == 0:
            return out.numpy(), 0.0
        noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)) * sigma
        ratio = float(noise.norm() / out.norm().clamp_min(1e-12))
        return (out + noise).numpy(), ratio

    def step(self, msg: Message, context: Context) -> Message:
        party, x, model, opt = self.bottom(context)
        rows = self.rows(context, "train")
        records = msg.content.array_records
        if GRADIENTS in records:
            done = rows[records[GRADIENTS]["batch"].numpy()]
            model.train()
            opt.zero_grad(set_to_none=True)
            out = model(torch.from_numpy(x[done]))  # recomputed: no activations were kept
            out.backward(torch.from_numpy(records[GRADIENTS]["gradient"].numpy()))
            opt.step()
            context.state[BOTTOM] = save(model, opt)
        content = RecordDict({"metrics": MetricRecord({"party": party})})
        if BATCH in records:
            batch = rows[values(records[BATCH])]
            seed = secret_seed()  # the label owner holds the config: it must not redraw this
            embedding, ratio = self.embed_rows(model, x[batch], seed)
            content[EMBEDDING] = one_array(embedding.astype(np.float32))
            content.metric_records["metrics"]["noise-ratio"] = ratio
        return Message(content=content, reply_to=msg)

    def embed(self, msg: Message, context: Context) -> Message:
        """Embeddings of every aligned test entity (no noise: evaluation only). The
        epoch's training is over: its models are the ones to resume from."""
        epoch = int(msg.content.config_records["config"]["round"])  # type: ignore[arg-type]
        node_store.save_private(context, epoch, PRIVATE, self.config.checkpoint_every)
        party, x, model, _ = self.bottom(context)
        model.eval()
        with torch.no_grad():
            out = model(torch.from_numpy(x[self.rows(context, "test")])).numpy()
        content = RecordDict(
            {
                EMBEDDING: one_array(out.astype(np.float32)),
                "metrics": MetricRecord({"party": party}),
            }
        )
        return Message(content=content, reply_to=msg)

    # -- top model (label owner) ---------------------------------------------------------
    def label_owner(self, context: Context) -> tuple[PartyTable, nn.Module, torch.optim.SGD]:
        party, table, classes = self.table(context)
        if party != LABEL_OWNER or table.y is None:
            raise RuntimeError(f"party {party} holds no labels: only party 0 runs the top model")
        model = build_top(self.config, classes)
        opt = optimizer(model, self.config.train)
        if TOP in context.state.array_records:
            restore(model, opt, context.state.array_records[TOP])
        return table, model, opt

    def merged(self, records: Mapping[str, ArrayRecord]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The merged embedding and the leaves gradients are taken for: one per party,
        or the sum alone when only the sum arrived (encrypted aggregation)."""
        s = self.settings
        rule = split_model(self.config).merge_rule()
        if SUM in records:
            total = torch.from_numpy(values(records[SUM])).float().requires_grad_()
            return rule.from_sum(total, s.parties), [total]
        leaves = [
            torch.from_numpy(values(records[embedding_of(p)])).requires_grad_()
            for p in range(s.parties)
        ]
        return rule.torch(torch.stack(leaves)), leaves

    def top(self, msg: Message, context: Context) -> Message:
        table, model, opt = self.label_owner(context)
        records = msg.content.array_records
        batch = self.rows(context, "train")[values(records[BATCH])]
        labels = torch.from_numpy(table.y[batch])  # type: ignore[index]
        merged, leaves = self.merged(records)
        model.train()
        opt.zero_grad(set_to_none=True)
        logits = model(merged)
        loss = nn.functional.cross_entropy(logits, labels)
        loss.backward()
        opt.step()
        context.state[TOP] = save(model, opt)
        sigma = self.settings.gradient_noise
        generator = torch.Generator().manual_seed(secret_seed())  # parties must not redraw it
        gradients, ratios = {}, []
        for name, leaf in zip(self.leaf_names(records), leaves, strict=True):
            assert leaf.grad is not None
            grad, ratio = noisy_gradient(leaf.grad, sigma, generator)
            if ratio is not None:
                ratios.append(ratio)
            gradients[name] = Array(grad.numpy().astype(np.float32))
        metrics = MetricRecord(
            {
                "noise-ratio": float(np.mean(ratios)) if ratios else 0.0,
                "loss-sum": float(loss) * len(labels),
                "correct": int((logits.argmax(1) == labels).sum()),
                "count": len(labels),
            }
        )
        content = RecordDict({GRADIENTS: ArrayRecord(gradients), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    def leaf_names(self, records: Mapping[str, ArrayRecord]) -> list[str]:
        """Names of the returned gradients: ``party-<p>``, or ``sum`` (one for all)."""
        return ["sum"] if SUM in records else [f"party-{p}" for p in range(self.settings.parties)]

    def evaluate_top(self, msg: Message, context: Context) -> Message:
        table, model, _ = self.label_owner(context)
        labels = torch.from_numpy(table.y[self.rows(context, "test")])  # type: ignore[index]
        model.eval()
        with torch.no_grad():
            merged, _ = self.merged(msg.content.array_records)
            logits = model(merged.detach())
            loss = float(nn.functional.cross_entropy(logits, labels))
        accuracy = float((logits.argmax(1) == labels).float().mean())
        metrics = MetricRecord({"accuracy": accuracy, "loss": loss, "count": len(labels)})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    def handlers(self) -> dict[str, object]:
        return {
            "query.ids": self.ids,
            "query.psi": self.psi,
            "query.align": self.align,
            "train.step": self.step,
            "train.top": self.top,
            "evaluate.embed": self.embed,
            "evaluate.top": self.evaluate_top,
        }
