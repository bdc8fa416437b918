"""Local training: it learns, it is seeded, and FedProx's proximal term anchors it."""

from __future__ import annotations

import numpy as np
import torch

from fedpriv.models import MODELS
from fedpriv.training import TrainConfig, evaluate, seed_for, train_local


def separable(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return x, y


def fresh_model(seed=0):
    torch.manual_seed(seed)
    return MODELS.create({"name": "logreg"}).build((5,), 2)


def test_training_learns_a_separable_problem():
    x, y = separable()
    model = fresh_model()
    before = evaluate(model, x, y)
    stats = train_local(model, x, y, TrainConfig(local_epochs=5, lr=0.5), seed=1)
    after = evaluate(model, x, y)
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.9
    assert stats.num_examples == 200 and stats.steps == 5 * 7  # ceil(200 / 32) = 7


def test_same_seed_same_model():
    x, y = separable()
    models = [fresh_model(), fresh_model()]
    for model in models:
        train_local(model, x, y, TrainConfig(), seed=seed_for(0, 1, 2))
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_proximal_term_keeps_weights_near_the_start():
    x, y = separable()
    drift = {}
    for mu in (0.0, 100.0):
        model = fresh_model()
        start = [p.detach().clone() for p in model.parameters()]
        train_local(model, x, y, TrainConfig(local_epochs=3, lr=0.005), seed=3, proximal_mu=mu)
        drift[mu] = sum(
            float((p.detach() - s).norm()) for p, s in zip(model.parameters(), start, strict=True)
        )
    assert drift[100.0] < 0.5 * drift[0.0]


def test_evaluate_matches_a_manual_computation():
    x, y = separable(n=50)
    model = fresh_model()
    got = evaluate(model, x, y, batch_size=7)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).item()
        accuracy = float((logits.argmax(1).numpy() == y).mean())
    assert np.isclose(got["loss"], loss, rtol=1e-5) and got["accuracy"] == accuracy


def test_seed_for_mixes_every_part():
    assert len({seed_for(0, r, c) for r in range(5) for c in range(5)}) == 25
