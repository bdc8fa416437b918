"""Book-keeping clipping against Opacus' own per-sample clipping (its hooks' per-sample
gradients, clipped per sample and summed), and whole DP-SGD runs against ghost and hooks.

Tolerance: float32, relative 1e-4 / absolute 1e-5 (sums of up to a few thousand
products in a different order)."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from opacus.grad_sample import GradSampleModule
from torch import nn

from fedpriv import ConfigError
from fedpriv.models import MODELS
from fedpriv.privacy import PRIVACY, grad_sample_mode, train_dp_sgd
from fedpriv.privacy.accounting import epsilon
from fedpriv.privacy.bookkeeping import BookkeepingClipping
from fedpriv.training import TrainConfig

pytestmark = [
    pytest.mark.usefixtures("task_identity"),
    # Opacus' hooks on a first layer whose input needs no gradient: expected, harmless
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
]


class Sequence(nn.Module):
    """Linear and LayerNorm over (B, T, d) inputs: the Gram and direct paths, tokens summed."""

    def __init__(self, features: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.embed(x)))).sum(1)


CASES = {
    "logreg": (lambda: MODELS.create({"name": "logreg"}).build((1, 8, 8), 10), (1, 8, 8)),
    "mlp": (lambda: MODELS.create({"name": "mlp", "hidden": [32, 16]}).build((20,), 10), (20,)),
    "cnn": (
        lambda: MODELS.create({"name": "cnn", "channels": [4, 8], "groups": 2}).build(
            (1, 8, 8), 10
        ),
        (1, 8, 8),
    ),
    "strided-conv": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 5, 3, stride=2, padding=1, dilation=2),
            nn.GroupNorm(1, 5),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(5 * 4 * 4, 4),
        ),
        (3, 9, 9),
    ),
    "wide-conv": (  # many channels, 4 positions: Gram matrices of the unfolded patches
        lambda: nn.Sequential(nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(64, 3)),
        (8, 4, 4),
    ),
    # T·(d_in + d_out) < d_in·d_out: Gram matrices for embed, per-sample gradients for head
    "sequence-gram": (lambda: Sequence(16, 64), (4, 16)),
    "sequence-direct": (lambda: Sequence(6, 4), (40, 6)),  # per-sample gradients directly
    "layernorm-2d": (
        lambda: nn.Sequential(nn.LayerNorm((4, 5)), nn.Flatten(), nn.Linear(20, 3)),
        (4, 5),
    ),
}


def opacus_clipped(model: nn.Module, x, y, max_grad_norm: float) -> dict[str, torch.Tensor]:
    """Opacus' hooks: per-sample gradients, clipped per sample as DPOptimizer does, summed."""
    gsm = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    nn.CrossEntropyLoss(reduction="sum")(gsm(x), y).backward()
    named = [(n, p) for n, p in gsm._module.named_parameters() if p.requires_grad]
    norms = torch.stack([p.grad_sample.flatten(1).norm(dim=1) for _, p in named]).norm(dim=0)
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    gsm.remove_hooks()
    return {n: torch.einsum("b,b...->...", factors, p.grad_sample) for n, p in named}, norms


def bookkeeping_clipped(model: nn.Module, x, y, max_grad_norm: float) -> dict[str, torch.Tensor]:
    clipping = BookkeepingClipping(model, max_grad_norm)
    with clipping.recording():
        nn.CrossEntropyLoss(reduction="sum")(model(x), y).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("case", list(CASES))
def test_clipped_sum_equals_opacus_per_sample_clipping(case):
    build, shape = CASES[case]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(24, *shape) * torch.linspace(0.1, 3, 24).reshape(-1, *[1] * len(shape))
    y = torch.randint(0, 3, (24,))
    _, norms = opacus_clipped(model, x, y, 1.0)
    clip = float(norms.median())  # half the samples above the clipping norm, half below
    assert (norms > clip).sum() >= 8 and (norms < clip).sum() >= 8
    expected, _ = opacus_clipped(model, x, y, clip)
    got = bookkeeping_clipped(model, x, y, clip)
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    # outside recording() the model trains as usual again
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_parameters_stay_untouched():
    torch.manual_seed(0)
    model = MODELS.create({"name": "mlp", "hidden": [8]}).build((5,), 3)
    model[1].weight.requires_grad_(False)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    expected, _ = opacus_clipped(model, x, y, 0.5)
    got = bookkeeping_clipped(model, x, y, 0.5)
    assert model[1].weight.grad is None and not model[1].weight.requires_grad
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-5)


def test_empty_batch_gives_zero_gradients():
    model = MODELS.create({"name": "cnn", "channels": [4], "groups": 2}).build((1, 8, 8), 10)
    x, y = torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)
    got = bookkeeping_clipped(model, x, y, 1.0)
    for grad, p in zip(got.values(), model.parameters(), strict=True):
        assert grad.shape == p.shape and not grad.any()


def test_a_layer_run_twice_is_refused():
    layer = nn.Linear(4, 4)
    clipping = BookkeepingClipping(layer, 1.0)
    with pytest.raises(RuntimeError, match="ran twice"), clipping.recording():
        layer(layer(torch.randn(2, 4))).sum().backward()
    assert layer.weight.requires_grad


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2)), "0 (Embedding)"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten()), "0 (Conv2d) has groups"),
    ],
)
def test_unsupported_layers_are_a_config_error_and_auto_falls_back(model, named):
    with pytest.raises(ConfigError, match=rf"grad_sample_mode=bookkeeping .*{re.escape(named)}"):
        grad_sample_mode(model, "bookkeeping")
    with pytest.raises(ConfigError, match=re.escape(named)):
        BookkeepingClipping(model, 1.0)
    assert grad_sample_mode(model, "auto") in ("ghost", "hooks")


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_auto_picks_bookkeeping_for_every_shipped_model(name):
    model = MODELS.create({"name": name}).build((1, 8, 8), 10)
    assert grad_sample_mode(model, "auto") == "bookkeeping"


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_dp_sgd_with_bookkeeping_matches_ghost_and_hooks_with_the_same_epsilon(name):
    """Same seed (secure_noise=false): the same Poisson batches and the same noise, so
    the three modes end on the same parameters and report the same ledger entry."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 96)
    train = TrainConfig(local_epochs=2, batch_size=16, lr=0.1)
    params = {"mlp": {"name": "mlp", "hidden": [16]}, "cnn": {"name": "cnn", "channels": [4]}}
    out = {}
    for mode in ("bookkeeping", "ghost", "hooks"):
        torch.manual_seed(0)
        model = MODELS.create(params[name]).build((1, 8, 8), 10)
        spec = PRIVACY.create(
            {"name": "dp_sgd", "noise_multiplier": 0.7, "max_grad_norm": 0.5,
             "grad_sample_mode": mode, "secure_noise": False},
            "privacy",
        )  # fmt: skip
        stats, ran = train_dp_sgd(model, x, y, train, spec, seed=3, planned_steps=12)
        history = [(ran["dp-noise-multiplier"], ran["dp-sample-rate"], ran["dp-steps"])]
        eps = epsilon(history, spec.delta_for(96), spec.accountant)
        out[mode] = ([p.detach().clone() for p in model.parameters()], ran, eps, stats.loss)
    assert out["bookkeeping"][1] == out["ghost"][1] == out["hooks"][1]
    assert out["bookkeeping"][1]["dp-steps"] == 12
    assert out["bookkeeping"][2] == out["hooks"][2] > 0
    for mode in ("ghost", "hooks"):
        for got, expected in zip(out["bookkeeping"][0], out[mode][0], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert out["bookkeeping"][3] == pytest.approx(out[mode][3], rel=1e-4)
