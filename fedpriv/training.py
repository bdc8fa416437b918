"""Local training and evaluation loops shared by every family's clients and the server."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from fedpriv.errors import ConfigError
from fedpriv.registry import Spec

#: What ``train.device`` accepts: ``auto`` (the node's CUDA GPU if its torch sees one, else
#: its CPU), ``cpu``, ``cuda`` or ``cuda:N``.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


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
    #: Where each node trains and evaluates: chosen on the node, since a fleet mixes a
    #: Jetson's GPU with a Pi's CPU. Models travel and rest on the CPU either way.
    device: str = "auto"

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
        if not DEVICE_PATTERN.fullmatch(str(self.device)):
            out.append(("device", "must be one of: auto, cpu, cuda, cuda:N"))
        return out


def torch_device(name: str) -> torch.device:
    """The device ``train.device`` names on this node. ``auto`` falls back to the CPU;
    a GPU asked for by name that this node's torch cannot use is a ConfigError, not a
    silent CPU run (which would defeat a Jetson and hide it)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(
                f"train.device={name} but this node's torch {torch.__version__} ({build}) "
                "sees no CUDA GPU; use train.device=auto or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device={name} but this node has {torch.cuda.device_count()} CUDA "
                f"GPU(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    return device


@contextlib.contextmanager
def placed(model: nn.Module, name: str) -> Iterator[torch.device]:
    """``model`` on the device ``name`` resolves to for a block of work, and back on the
    CPU after it (where state dicts are read, merged and sent), also on an error."""
    device = torch_device(name)
    model.to(device)
    try:
        yield device
    finally:
        model.to("cpu")


@dataclasses.dataclass(frozen=True)
class TrainStats:
    """What one client's local training did: mean loss and accuracy over its steps."""

    num_examples: int
    steps: int
    loss: float
    accuracy: float
    seconds: float
    #: Whether the steps ran on a CUDA GPU (``train.device``, as resolved on the node).
    on_gpu: bool = False


class Tally:
    """Summed loss and correct predictions over a training's batches. On a GPU the sums
    stay there and are read once (reading them after every step would make each step
    wait for the GPU); on the CPU they are Python floats, which cost less than a tensor
    operation per step. Both are float64 sums, the same numbers."""

    def __init__(self, device: torch.device) -> None:
        self.on_gpu = device.type == "cuda"
        self.loss: torch.Tensor | float = (
            torch.zeros((), dtype=torch.float64, device=device) if self.on_gpu else 0.0
        )
        self.correct: torch.Tensor | int = (
            torch.zeros((), dtype=torch.int64, device=device) if self.on_gpu else 0
        )
        self.seen = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """One batch: ``loss`` its mean loss, ``logits`` the model's output on it."""
        hits = (logits.detach().argmax(dim=1) == targets).sum()
        if self.on_gpu:
            self.loss += loss.detach().double() * len(targets)
            self.correct += hits
        else:
            self.loss += loss.item() * len(targets)
            self.correct += int(hits)
        self.seen += len(targets)

    def stats(self, num_examples: int, steps: int, started: float) -> TrainStats:
        """The training's :class:`TrainStats`, read once (``started``: its perf_counter)."""
        seen = max(self.seen, 1)
        return TrainStats(
            num_examples=num_examples,
            steps=steps,
            loss=float(self.loss) / seen,
            accuracy=int(self.correct) / seen,
            seconds=time.perf_counter() - started,
            on_gpu=self.on_gpu,
        )


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
    steps = 0
    with placed(model, config.device) as device:
        tally = Tally(device)
        features, labels = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
        model.train()
        for _ in range(config.local_epochs):
            order = torch.randperm(len(labels), generator=generator).to(device)
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
                        (p - a).pow(2).sum()
                        for p, a in zip(model.parameters(), anchor, strict=True)
                    )
                    objective = loss + 0.5 * proximal_mu * drift
                objective.backward()
                optimizer.step()
                if after_step is not None:
                    after_step()
                tally.add(loss, logits, targets)
                steps += 1
    return tally.stats(len(y), steps, start)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 2048, device: str = "cpu"
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``, on ``device`` (a
    ``train.device`` value)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    with placed(model, device) as where:
        features, labels = torch.from_numpy(x), torch.from_numpy(y)
        for start in range(0, len(labels), batch_size):
            logits = model(features[start : start + batch_size].to(where))
            targets = labels[start : start + batch_size].to(where)
            loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(dim=1) == targets).sum())
    n = max(len(y), 1)
    return {"accuracy": correct / n, "loss": loss_sum / n}
