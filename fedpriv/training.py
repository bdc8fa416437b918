"""Local training and evaluation loops shared by every family's clients and the server."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedpriv.registry import Spec


@dataclasses.dataclass(frozen=True)
class TrainConfig(Spec):
    """Local training on each client, per round."""

    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    #: Horizontal clients also score their own trained model on the test split before it
    #: is merged (``test-accuracy``: how the holder would do alone). Off by default: it
    #: costs an evaluation per client per round.
    local_accuracy: bool = False

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.local_epochs < 1:
            out.append(("local_epochs", "must be >= 1"))
        if self.batch_size < 1:
            out.append(("batch_size", "must be >= 1"))
        if not self.lr > 0:
            out.append(("lr", "must be > 0, e.g. 0.05"))
        if not 0.0 <= self.momentum < 1.0:
            out.append(("momentum", "must be in [0, 1)"))
        if self.weight_decay < 0:
            out.append(("weight_decay", "must be >= 0"))
        return out


@dataclasses.dataclass(frozen=True)
class TrainStats:
    """What one client's local training did: mean loss and accuracy over its steps."""

    num_examples: int
    steps: int
    loss: float
    accuracy: float
    seconds: float


def secret_seed() -> int:
    """A seed nobody else can compute (OS randomness), for noise that protects data:
    noise drawn from the run's seed could be regenerated and subtracted by anyone
    holding the config."""
    return int.from_bytes(os.urandom(8), "big") >> 1


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixed from several integers (experiment seed, round, client)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    *,
    seed: int,
    proximal_mu: float = 0.0,
    after_step: Callable[[], None] | None = None,
    max_steps: int | None = None,
) -> TrainStats:
    """SGD on ``(x, y)`` for ``config.local_epochs`` epochs, shuffled by ``seed``, or
    ``max_steps`` steps if fewer (a device sized to a round deadline).

    With ``proximal_mu > 0`` the loss gains (mu/2)·||w - w_start||², FedProx's proximal
    term anchoring the model to the weights it started from (the global model).
    ``after_step`` runs after every optimizer step: a data-independent update such as
    DiNNO's consensus pull.
    """
    start = time.perf_counter()
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    model.train()
    loss_sum, correct, seen, steps = 0.0, 0, 0, 0
    for _ in range(config.local_epochs):
        order = torch.randperm(len(labels), generator=generator)
        for batch in order.split(config.batch_size):
            if max_steps is not None and steps >= max_steps:
                break
            inputs, targets = features[batch], labels[batch]
            optimizer.zero_grad(set_to_none=True)
            logits = model(inputs)
            loss = nn.functional.cross_entropy(logits, targets)
            objective = loss
            if anchor:
                drift = sum(
                    (p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                objective = loss + 0.5 * proximal_mu * drift
            objective.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            loss_sum += loss.item() * len(targets)
            correct += int((logits.argmax(dim=1) == targets).sum())
            seen += len(targets)
            steps += 1
    return TrainStats(
        num_examples=len(labels),
        steps=steps,
        loss=loss_sum / max(seen, 1),
        accuracy=correct / max(seen, 1),
        seconds=time.perf_counter() - start,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 2048
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    for start in range(0, len(labels), batch_size):
        logits = model(features[start : start + batch_size])
        targets = labels[start : start + batch_size]
        loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
        correct += int((logits.argmax(dim=1) == targets).sum())
    n = max(len(labels), 1)
    return {"accuracy": correct / n, "loss": loss_sum / n}
