"""Differential privacy: ε against Opacus' accountant, composition, budgets, bad values."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant
from torch import nn

from fedpriv import ConfigError, load_config
from fedpriv.data import federate
from fedpriv.models import MODELS
from fedpriv.privacy import (
    PRIVACY,
    Central,
    DpSgd,
    PrivacyLedgerMod,
    declined_reason,
    grad_sample_mode,
    private_model,
    train_dp_sgd,
)
from fedpriv.privacy.accounting import epsilon, planned_steps, sample_rate
from fedpriv.training import TrainConfig, evaluate

ACCOUNTANT_CLASSES = {"rdp": RDPAccountant, "prv": PRVAccountant, "gdp": GaussianAccountant}


pytestmark = pytest.mark.usefixtures("task_identity")


def by_stepping(accountant: str, sigma: float, rate: float, steps: int, delta: float) -> float:
    """ε the way Opacus' own optimizer hook builds it: one accountant.step per step."""
    acct = ACCOUNTANT_CLASSES[accountant]()
    for _ in range(steps):
        acct.step(noise_multiplier=sigma, sample_rate=rate)
    return float(acct.get_epsilon(delta=delta))


def separable(n=100, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def dp(**params) -> DpSgd:
    return PRIVACY.create({"name": "dp_sgd", **params}, "privacy")


@pytest.mark.parametrize("accountant", ["rdp", "prv", "gdp"])
def test_reported_epsilon_is_opacus_epsilon_for_what_ran(accountant):
    x, y = separable(n=100)
    spec = dp(noise_multiplier=1.1, accountant=accountant)
    model = MODELS.create({"name": "mlp", "hidden": [8]}).build((5,), 2)
    train = TrainConfig(local_epochs=2, batch_size=16)
    _, ran = train_dp_sgd(model, x, y, train, spec, seed=0, planned_steps=14)
    assert ran["dp-sample-rate"] == sample_rate(100, 16) == 1 / 7
    assert ran["dp-steps"] == 2 * 7  # Poisson loader: ceil(n / B) logical steps per epoch
    ours = epsilon([(1.1, ran["dp-sample-rate"], ran["dp-steps"])], 1e-3, accountant)
    assert ours == pytest.approx(by_stepping(accountant, 1.1, 1 / 7, 14, 1e-3), rel=1e-6)


def test_target_epsilon_calibrates_sigma_over_all_planned_steps():
    spec = dp(target_epsilon=2.0, delta=1e-4)
    steps = 5 * 2 * 7  # rounds × epochs × batches per epoch
    sigma = spec.noise_for(100, 16, steps)
    spent = by_stepping("prv", sigma, 1 / 7, steps, 1e-4)
    assert 1.95 <= spent <= 2.0 + 1e-6  # Opacus' binary search tolerance is 0.01


def fake_context(pid: int = 0) -> Context:
    node_config = {"partition-id": pid, "num-partitions": 3}
    return Context(
        run_id=1, node_id=pid + 1, node_config=node_config, state=RecordDict(), run_config={}
    )


def train_message() -> Message:
    return Message(RecordDict(), dst_node_id=1, message_type="train")


def trainer_reply(sigma: float, rate: float, steps: int):
    def call_next(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"num-examples": 10, "dp-noise-multiplier": sigma,
                                "dp-sample-rate": rate, "dp-steps": steps})  # fmt: skip
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return call_next


def test_ledger_composes_across_rounds_in_context_state():
    cfg = load_config(overrides=["privacy=dp_sgd", "privacy.noise_multiplier=1.0",
                                 "privacy.target_epsilon=null", "num_clients=3",
                                 "train.batch_size=32", "train.local_epochs=1"])  # fmt: skip
    mod, context = PrivacyLedgerMod(cfg), fake_context(0)
    n = len(federate(cfg.data, cfg.partition, 3, cfg.seed).parts[0])
    rate, k, delta = sample_rate(n, 32), math.ceil(n / 32), 1 / (10 * n)
    first = mod(train_message(), context, trainer_reply(1.0, rate, k))
    second = mod(train_message(), context, trainer_reply(1.0, rate, k))
    eps1, eps2 = (float(m.content["metrics"]["epsilon"]) for m in (first, second))
    assert eps1 == pytest.approx(by_stepping("prv", 1.0, rate, k, delta), rel=1e-6)
    # Two rounds of k steps = one accountant history of 2k steps.
    assert eps2 == pytest.approx(by_stepping("prv", 1.0, rate, 2 * k, delta), rel=1e-6)
    assert eps2 > eps1 and float(second.content["metrics"]["delta"]) == delta
    fresh = mod(train_message(), fake_context(1), trainer_reply(1.0, rate, k))
    assert float(fresh.content["metrics"]["epsilon"]) < eps2  # state is per node


def test_history_merges_identical_steps_and_keeps_epsilon():
    from fedpriv.privacy.accounting import compose

    history = compose(compose([], (1.0, 0.1, 5)), (1.0, 0.1, 7))
    assert history == [(1.0, 0.1, 12)]
    history = compose(history, (2.0, 0.1, 3))
    assert history == [(1.0, 0.1, 12), (2.0, 0.1, 3)]
    unmerged = [(1.0, 0.1, 5), (1.0, 0.1, 7), (2.0, 0.1, 3)]
    for accountant in ("rdp", "prv"):
        assert epsilon(history, 1e-5, accountant) == pytest.approx(
            epsilon(unmerged, 1e-5, accountant), rel=1e-3
        )


def test_budget_declines_before_training_and_says_why():
    cfg = load_config(overrides=["privacy=dp_sgd", "privacy.noise_multiplier=1.0",
                                 "privacy.target_epsilon=null", "num_clients=3",
                                 "train.batch_size=32", "train.local_epochs=1"])  # fmt: skip
    n = len(federate(cfg.data, cfg.partition, 3, cfg.seed).parts[0])
    rate, k, delta = sample_rate(n, 32), math.ceil(n / 32), 1 / (10 * n)
    one, two = (by_stepping("prv", 1.0, rate, r * k, delta) for r in (1, 2))
    budget = (one + two) / 2  # round 1 fits, round 2 would not
    mod = PrivacyLedgerMod(cfg.replace(privacy=dp(noise_multiplier=1.0, budget_epsilon=budget)))
    context = fake_context(0)
    assert declined_reason(mod(train_message(), context, trainer_reply(1.0, rate, k))) is None

    def must_not_train(msg, ctx):
        raise AssertionError("a client over budget must not train")

    declined = mod(train_message(), context, must_not_train)
    reason = declined_reason(declined)
    assert reason is not None and "budget_epsilon" in reason and f"{two:.3f}" in reason
    assert float(declined.content["metrics"]["epsilon"]) == pytest.approx(one, rel=1e-6)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"noise_multiplier": -1.0}, "privacy.noise_multiplier=-1.0 must be > 0"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 0.0}, "privacy.max_grad_norm=0.0 must be > 0"),
        ({"noise_multiplier": 1.0, "delta": 1.0}, "privacy.delta=1.0 must be in (0, 1)"),
        ({"target_epsilon": 0.0}, "privacy.target_epsilon=0.0 must be > 0"),
        ({"target_epsilon": 1.0, "noise_multiplier": 1.0}, "exactly one of them"),
        ({}, "exactly one of them"),
        ({"noise_multiplier": 1.0, "accountant": "rpd"}, "must be one of: prv, rdp, gdp"),
        ({"noise_multiplier": 1.0, "grad_sample_mode": "x"}, "must be one of: auto, ghost"),
    ],
)
def test_bad_dp_values_are_refused_clearly(params, message):
    with pytest.raises(ConfigError) as caught:
        dp(**params)
    assert message in str(caught.value)


def test_delta_must_be_below_one_over_n_for_every_client(tmp_path):
    from fedpriv import run

    cfg = load_config(overrides=["privacy=dp_sgd", "privacy.delta=0.01", "num_clients=10",
                                 f"output_dir={tmp_path}"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"privacy.delta=0.01 must be < 1/n .* try 0.0001"):
        run(cfg)


def test_central_dp_refuses_strategies_without_a_uniform_mean():
    with pytest.raises(ConfigError, match="strategy=fedmedian is not one; use one of: fedavg"):
        load_config(overrides=["privacy=central", "strategy=fedmedian"])
    with pytest.raises(
        ConfigError, match=r"privacy=dp_sgd\+central: central DP needs a uniform-mean"
    ):
        load_config(overrides=["privacy=dp_sgd+central", "strategy=krum"])
    with pytest.raises(ConfigError, match=r"privacy.delta=0.5 must be < 1/num_clients"):
        load_config(overrides=["privacy=central", "privacy.delta=0.5"])


def test_adaptive_clipping_noise_is_checked_against_the_count_noise():
    with pytest.raises(ConfigError, match="too large for adaptive clipping"):
        load_config(overrides=["privacy=central", "privacy.clipping=adaptive", "num_clients=4"])
    cfg = load_config(overrides=["privacy=central", "privacy.clipping=adaptive",
                                 "privacy.clipped_count_stddev=1.0", "num_clients=4"])  # fmt: skip
    assert cfg.privacy.clipped_count_stddev == 1.0


def test_combined_mode_reports_nested_keys():
    with pytest.raises(ConfigError, match=r"privacy.local.max_grad_norm=-1.0 must be > 0"):
        load_config(overrides=["privacy=dp_sgd+central", "privacy.local.max_grad_norm=-1"])


def test_batchnorm_is_fixed_with_a_warning_and_unfixable_models_are_refused(caplog):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
    with caplog.at_level(logging.WARNING, logger="fedpriv"):
        fixed = private_model(model)
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixed.modules())
    assert "changed to be valid for DP-SGD" in caplog.text and "BatchNorm" in caplog.text
    frozen = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2)).eval()  # eval mode: not fixable
    with pytest.raises(ConfigError, match="cannot be trained with DP-SGD"):
        private_model(frozen)


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_shipped_models_train_with_bookkeeping_clipping(name):
    model = MODELS.create({"name": name}).build((1, 8, 8), 10)
    assert private_model(model) is model
    assert grad_sample_mode(model, "auto") == "bookkeeping"
    assert grad_sample_mode(model, "ghost") == "ghost"
    assert grad_sample_mode(model, "hooks") == "hooks"


@pytest.mark.parametrize("mode", ["bookkeeping", "ghost", "hooks"])
def test_dp_training_learns_and_physical_batches_keep_logical_steps(mode):
    x, y = separable(n=256)
    train = TrainConfig(local_epochs=3, batch_size=64, lr=0.5)
    results = {}
    for physical in (None, 16):
        torch.manual_seed(0)
        model = MODELS.create({"name": "logreg"}).build((5,), 2)
        spec = dp(noise_multiplier=0.5, grad_sample_mode=mode, max_physical_batch_size=physical)
        _, ran = train_dp_sgd(model, x, y, train, spec, seed=1, planned_steps=12)
        results[physical] = (evaluate(model, x, y)["accuracy"], ran["dp-steps"])
    assert results[None][1] == results[16][1] == 3 * 4
    assert results[None][0] > 0.85 and results[16][0] > 0.85


def test_central_epsilon_is_exact_without_sampling_amplification():
    spec: Central = PRIVACY.create({"name": "central", "noise_multiplier": 0.8}, "privacy")
    assert spec.epsilon([], 10) == 0.0
    exact = spec.epsilon([(0.8, 1.0, 5)], 10)  # δ = 1/(10·10)
    assert exact == pytest.approx(9.688, abs=1e-3)  # test_central_accounting.py checks it
    assert exact < by_stepping("rdp", 0.8, 1.0, 5, 0.01)


def test_central_dp_weighs_every_train_reply_one_on_the_server():
    def reply() -> Message:
        return trainer_reply(1.0, 0.1, 1)(train_message(), fake_context())

    declared = reply()
    declared.content["metrics"]["dp-weight"] = 1e6  # what a client declared is not used
    PRIVACY.create({"name": "central"}, "privacy").weigh(declared)
    assert declared.content["metrics"]["dp-weight"] == 1
    PRIVACY.create({"name": "none"}, "privacy").weigh(plain := reply())
    assert "dp-weight" not in plain.content["metrics"]


def test_planned_steps_counts_every_round():
    cfg = load_config(overrides=["rounds=7", "train.local_epochs=2", "train.batch_size=10"])
    assert planned_steps(cfg, 95) == 7 * 2 * 10
