"""The split model: a bottom model per party, a merge rule, a top model at the label owner.

The same pieces run split across nodes (:mod:`strategies.vertical.party`) and joined in
one process (:func:`train_centrally`, the baseline every vertical run is compared with).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from fedpriv.config import ExperimentConfig
from fedpriv.strategies.vertical.settings import split_model, vertical_settings
from fedpriv.training import TrainConfig, evaluate, seed_for

#: Seed stream of the top model (parties use their index).
TOP = 1_000


def noisy_gradient(
    grad: torch.Tensor, sigma: float, generator: torch.Generator
) -> tuple[torch.Tensor, float | None]:
    """The gradient the label owner returns for one embedding: ``grad`` plus Gaussian
    noise of std. dev. ``sigma`` (``vertical.gradient_noise``), and the noise's norm
    relative to the gradient's (None when ``sigma`` is 0). One function, so audits
    (:mod:`fedpriv.attacks.label_inference`) attack exactly what parties receive."""
    if sigma <= 0:
        return grad, None
    noise = torch.randn(grad.shape, generator=generator) * sigma
    return grad + noise, float(noise.norm() / grad.norm().clamp_min(1e-12))


def build_bottom(config: ExperimentConfig, party: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Party ``party``'s bottom model (``model=``), ending in ``embedding_dim`` outputs."""
    torch.manual_seed(seed_for(config.seed, party))
    return config.model.build(input_shape, split_model(config).embedding_dim)


def build_top(config: ExperimentConfig, num_classes: int) -> nn.Module:
    """The label owner's MLP from the merged embedding to the class logits."""
    split = split_model(config)
    torch.manual_seed(seed_for(config.seed, TOP))
    widths = [split.merged_width(vertical_settings(config).parties), *split.top_hidden]
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], num_classes))


def optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay
    )


def save(model: nn.Module, opt: torch.optim.Optimizer) -> ArrayRecord:
    """Weights and momentum buffers as one record (kept in ``context.state``)."""
    tensors = {f"w.{k}": v.detach() for k, v in model.state_dict().items()}
    for name, param in model.named_parameters():
        buffer = opt.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            tensors[f"m.{name}"] = buffer
    return ArrayRecord(tensors)


def restore(model: nn.Module, opt: torch.optim.Optimizer, record: ArrayRecord) -> None:
    """Load what :func:`save` kept into a freshly built model and optimizer."""
    tensors = record.to_torch_state_dict()
    model.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("w.")})
    for name, param in model.named_parameters():
        if f"m.{name}" in tensors:
            opt.state[param]["momentum_buffer"] = tensors[f"m.{name}"].clone()


def epoch_batches(count: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Positions in the aligned training order, shuffled per epoch, cut into batches."""
    order = np.random.default_rng([seed, 13, epoch]).permutation(count)
    return [order[i : i + batch_size] for i in range(0, count, batch_size)]


class SplitModel(nn.Module):
    """All bottom models, the merge and the top model in one module."""

    def __init__(self, config: ExperimentConfig, shapes: Sequence[tuple[int, ...]], classes: int):
        super().__init__()
        self.rule = split_model(config).merge_rule()
        self.bottoms = nn.ModuleList(
            build_bottom(config, party, shape) for party, shape in enumerate(shapes)
        )
        self.top = build_top(config, classes)

    def forward(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        embeddings = [bottom(x) for bottom, x in zip(self.bottoms, parts, strict=True)]
        return self.top(self.rule.torch(torch.stack(embeddings)))


class _Joined(nn.Module):
    """A SplitModel on one tensor of concatenated flat features (for ``evaluate``)."""

    def __init__(self, model: SplitModel, shapes: Sequence[tuple[int, ...]]) -> None:
        super().__init__()
        self.model = model
        self.cuts = np.cumsum([0, *(int(np.prod(s)) for s in shapes)])
        self.shapes = shapes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [
            x[:, a:b].reshape(len(x), *shape)
            for (a, b), shape in zip(itertools.pairwise(self.cuts), self.shapes, strict=True)
        ]
        return self.model(parts)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` (None: unchanged) for the block,
    then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(count or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_centrally(
    config: ExperimentConfig,
    train_parts: Sequence[np.ndarray],
    y_train: np.ndarray,
    test_parts: Sequence[np.ndarray],
    y_test: np.ndarray,
    classes: int,
    epochs: int,
) -> list[dict[str, float]]:
    """The same split model trained in one process on the joined features, with the
    same initialization, batches and optimizer: the yardstick for a vertical run.
    Returns test accuracy and loss after each epoch.

    Runs with the clients' ``engine.torch_threads``: convolutions sum in a different
    order on other thread counts, and SGD amplifies such last-bit differences into
    visibly different models within an epoch or two.
    """
    with torch_threads(config.engine.torch_threads):
        shapes = [tuple(p.shape[1:]) for p in train_parts]
        model = SplitModel(config, shapes, classes)
        opt = optimizer(model, config.train)
        tensors = [torch.from_numpy(p) for p in train_parts]
        labels = torch.from_numpy(y_train)
        joined_test = np.concatenate([p.reshape(len(p), -1) for p in test_parts], axis=1)
        history = []
        for epoch in range(1, epochs + 1):
            model.train()
            for batch in epoch_batches(len(labels), config.train.batch_size, config.seed, epoch):
                index = torch.from_numpy(batch)
                opt.zero_grad(set_to_none=True)
                logits = model([t[index] for t in tensors])
                nn.functional.cross_entropy(logits, labels[index]).backward()
                opt.step()
            history.append(evaluate(_Joined(model, shapes), joined_test, y_test))
        return history
