"""A server that holds the config tries to learn which DP-SGD steps held each example.

ε's amplification by subsampling assumes nobody knows the Poisson batches. Everything a
client seeds from is in the config (the run's seed, the round, the partition), so the
attack replays the client's sampler from the seed the client would have used and
compares the batches it predicts with the batches the client really trained on.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

from fedpriv.privacy import PRIVACY, train_dp_sgd
from fedpriv.privacy.dp_sgd import poisson_loader
from fedpriv.training import TrainConfig, seed_for

N, BATCH, EPOCHS = 60, 10, 2


class RecordingModel(nn.Module):
    """A linear model whose first feature is each example's index: every forward pass
    records which examples the step held (what the attacker wants to know)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.batches: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(tuple(sorted(int(i) for i in x[:, 0])))
        return self.linear(x)


def indexed_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3)).astype(np.float32)
    x[:, 0] = np.arange(N)
    return x, (x[:, 1] > 0).astype(np.int64)


def predicted_batches(seed: int) -> list[tuple[int, ...]]:
    """The attacker's replay of the client's Poisson sampler (fedpriv's own code, which
    the server has) from the seed in the config."""
    x, y = indexed_data()
    loader = poisson_loader(x, y, BATCH, seed=seed, secret=False)
    assert isinstance(loader.batch_sampler, UniformWithReplacementSampler)
    return [tuple(sorted(int(i) for i in batch[0][:, 0])) for _ in range(EPOCHS)
            for batch in loader]  # fmt: skip


def train(secure_noise: bool) -> tuple[list[tuple[int, ...]], int]:
    x, y = indexed_data()
    model = RecordingModel()
    spec = PRIVACY.create(
        {"name": "dp_sgd", "noise_multiplier": 1.0, "grad_sample_mode": "hooks",
         "secure_noise": secure_noise}, "privacy")  # fmt: skip
    seed = seed_for(7, 1, 0)  # the run's seed, the round, the partition: all in the config
    train_dp_sgd(model, x, y, TrainConfig(local_epochs=EPOCHS, batch_size=BATCH), spec,
                 seed=seed, planned_steps=EPOCHS * math.ceil(N / BATCH))  # fmt: skip
    return [b for b in model.batches if b], seed


def test_a_server_with_the_config_cannot_replay_the_poisson_batches():
    batches, seed = train(secure_noise=True)
    predicted = [b for b in predicted_batches(seed) if b]
    assert len(batches) > 5
    # Before the fix the sampler was seeded from the config: every batch matched.
    assert batches != predicted
    assert sum(b == p for b, p in zip(batches, predicted, strict=False)) < len(batches) / 2


def test_the_simulation_only_mode_is_exactly_what_the_attack_replays():
    """secure_noise=false (documented as research in simulation only) repeats from the
    seed: the attack succeeds, which is why a fleet refuses that setting."""
    batches, seed = train(secure_noise=False)
    assert batches == [b for b in predicted_batches(seed) if b]


@pytest.mark.parametrize("n, batch", [(930, 10), (60, 10), (61, 10), (1, 4)])
def test_reported_sample_rate_is_the_rate_sampled(n, batch):
    """q is 1/⌈n/B⌉ (Opacus' rule); reading it back from the sampler's length gave
    1/92 for n=930, B=10, which the accountant had sampled at 1/93."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    spec = PRIVACY.create({"name": "dp_sgd", "noise_multiplier": 1.0}, "privacy")
    model = nn.Linear(3, 2)
    _, ran = train_dp_sgd(model, x, y, TrainConfig(local_epochs=1, batch_size=batch), spec,
                          seed=0, planned_steps=math.ceil(n / batch))  # fmt: skip
    assert ran["dp-sample-rate"] == 1 / math.ceil(n / batch)


def test_secure_mode_draws_the_noise_from_the_csprng_with_opacus_std():
    """privacy.secure_mode: the noise is σC-distributed as Opacus' and follows neither
    torch's global seed nor a noise generator anyone could seed."""
    from fedpriv.privacy.dp_sgd import use_csprng_noise

    def noise_after_one_step(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        model = nn.Linear(400, 250, bias=False)
        nn.init.zeros_(model.weight)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        from opacus.optimizers import DPOptimizer

        private = DPOptimizer(optimizer, noise_multiplier=1.5, max_grad_norm=0.5,
                              expected_batch_size=1, loss_reduction="sum")  # fmt: skip
        use_csprng_noise(private)
        model.weight.grad_sample = torch.zeros(1, 250, 400)  # one example, zero gradient
        private.step()
        return -model.weight.detach().flatten()  # lr 1 from zero: the noise itself

    first, again = noise_after_one_step(0), noise_after_one_step(0)
    assert float(first.std()) == pytest.approx(1.5 * 0.5, rel=0.02)
    assert abs(float(first.mean())) < 0.01
    assert not torch.equal(first, again)  # the same torch seed, other noise


def test_secure_mode_trains_and_accounts_as_the_default_noise():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(256, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    results = {}
    for secure in (False, True):
        torch.manual_seed(0)
        model = nn.Linear(5, 2)
        spec = PRIVACY.create({"name": "dp_sgd", "noise_multiplier": 0.5,
                               "secure_mode": secure}, "privacy")  # fmt: skip
        _, ran = train_dp_sgd(model, x, y, TrainConfig(local_epochs=3, batch_size=64, lr=0.5),
                              spec, seed=1, planned_steps=12)  # fmt: skip
        accuracy = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
        results[secure] = (ran, accuracy)
    assert results[True][0] == results[False][0]  # the same σ, q and steps accounted
    assert results[True][1] > 0.85


def test_secure_mode_needs_secret_noise():
    with pytest.raises(ValueError, match=r"secure_mode.*secure_noise=true"):
        PRIVACY.create({"name": "dp_sgd", "noise_multiplier": 1.0, "secure_mode": True,
                        "secure_noise": False}, "privacy")  # fmt: skip
