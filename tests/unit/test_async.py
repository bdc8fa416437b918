"""Asynchronous server rules, checked against the update formulas written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from hypothesis import given
from hypothesis import strategies as st

from fedpriv import load_config
from fedpriv.errors import ConfigError
from fedpriv.strategies.horizontal.asynchronous import (
    ELASTIC_MODEL,
    Arrival,
    Bmuf,
    Easgd,
    FedAsync,
    FedBuff,
    compensate,
    elastic_exchange,
    staleness_weight,
)

RNG = np.random.default_rng(0)


def arrival(base: np.ndarray, staleness: int = 0) -> Arrival:
    return Arrival(base=base, local=base + RNG.normal(size=base.shape), staleness=staleness)


def test_staleness_weights_follow_the_fedasync_paper() -> None:
    assert staleness_weight("constant", 7, a=0.5, b=4) == 1.0
    assert staleness_weight("polynomial", 3, a=0.5, b=4) == pytest.approx(0.5)  # 4^-0.5
    assert staleness_weight("polynomial", 0, a=2.0, b=4) == 1.0
    assert staleness_weight("hinge", 4, a=0.5, b=4) == 1.0
    assert staleness_weight("hinge", 6, a=0.5, b=4) == pytest.approx(1 / (0.5 * 2 + 1))
    with pytest.raises(ValueError, match="staleness='cubic'"):
        staleness_weight("cubic", 1, a=0.5, b=4)
    with pytest.raises(ValueError, match="staleness=-1"):
        staleness_weight("constant", -1, a=0.5, b=4)


@given(
    kind=st.sampled_from(["constant", "polynomial", "hinge"]),
    tau=st.integers(0, 1000),
    a=st.floats(0, 5),
    b=st.integers(0, 20),
)
def test_staleness_weights_are_in_0_1_and_never_grow_with_age(kind, tau, a, b) -> None:
    now, older = staleness_weight(kind, tau, a, b), staleness_weight(kind, tau + 1, a, b)
    assert 0 < older <= now <= 1


def test_fedasync_mixes_each_arrival_by_alpha_times_its_staleness_weight() -> None:
    spec = FedAsync(alpha=0.6, staleness="polynomial", staleness_a=0.5)
    model = RNG.normal(size=5)
    state = spec.start(model, num_clients=3)
    fresh, stale = arrival(model), arrival(model, staleness=3)
    assert spec.receive(state, fresh) and state.version == 1
    expected = 0.4 * model + 0.6 * fresh.local
    np.testing.assert_allclose(state.model, expected)
    spec.receive(state, stale)
    mix = 0.6 * 4**-0.5
    np.testing.assert_allclose(state.model, (1 - mix) * expected + mix * stale.local)
    assert state.version == 2


def test_fedbuff_steps_once_per_buffer_on_the_weighted_mean_update() -> None:
    spec = FedBuff(buffer_size=2, server_lr=0.5, staleness="polynomial", staleness_a=1.0)
    model = RNG.normal(size=4)
    state = spec.start(model, num_clients=4)
    first, second = arrival(model), arrival(model - 1, staleness=1)
    assert not spec.receive(state, first)
    np.testing.assert_array_equal(state.model, model)  # buffered, not applied
    assert spec.receive(state, second) and state.version == 1
    mean = ((first.local - first.base) + 0.5 * (second.local - second.base)) / 2
    np.testing.assert_allclose(state.model, model + 0.5 * mean)
    assert state.buffer == []


def test_fresh_full_buffers_are_model_averaging() -> None:
    """FedBuff (η = 1) and BMUF (no momentum, ζ = 1) over one fresh update per client
    end at the clients' mean model: FedAvg with equal weights."""
    model = RNG.normal(size=6)
    arrivals = [arrival(model) for _ in range(3)]
    mean_model = np.mean([a.local for a in arrivals], axis=0)
    for spec in (
        FedBuff(buffer_size=None, staleness="constant"),
        Bmuf(block_momentum=0.0, block_lr=1.0, nesterov=False),
    ):
        state = spec.start(model, num_clients=3)
        changed = [spec.receive(state, a) for a in arrivals]
        assert changed == [False, False, True]
        np.testing.assert_allclose(state.model, mean_model)


def test_bmuf_filters_block_updates_with_nesterov_momentum() -> None:
    m, zeta = 0.5, 0.8
    spec = Bmuf(buffer_size=1, block_momentum=m, block_lr=zeta, nesterov=True)
    w = RNG.normal(size=3)
    state = spec.start(w, num_clients=2)
    anchor, momentum = w.copy(), np.zeros(3)
    for _ in range(3):
        update = arrival(state.model)
        g = update.local - update.base
        spec.receive(state, update)
        momentum = m * momentum + zeta * g
        anchor = anchor + momentum
        np.testing.assert_allclose(state.anchor, anchor)
        np.testing.assert_allclose(state.model, anchor + m * momentum)  # the look-ahead


def test_easgd_adds_each_elastic_difference_to_the_center_by_its_staleness() -> None:
    spec = Easgd(rho=0.25, staleness="polynomial", staleness_a=1.0)
    center = RNG.normal(size=4)
    state = spec.start(center, num_clients=2)
    stale = arrival(center - 0.5, staleness=3)  # an elastic difference from an old center
    spec.receive(state, stale)
    np.testing.assert_allclose(state.model, center + 0.25 * (stale.local - stale.base))


def test_delay_compensation_corrects_by_update_squared_times_drift() -> None:
    update, drift = np.array([1.0, -2.0, 0.5]), np.array([0.1, 0.2, -0.4])
    expected = [u - 0.3 * u * u * d for u, d in zip(update, drift, strict=True)]
    np.testing.assert_allclose(compensate(update, drift, 0.3), expected)
    np.testing.assert_array_equal(compensate(update, drift, 0.0), update)
    spec = FedAsync(alpha=1.0, delay_compensation=0.3)
    base = np.zeros(3)
    state = spec.start(base + drift, num_clients=2)  # the model moved since the base
    spec.receive(state, Arrival(base=base, local=update, staleness=1))
    np.testing.assert_allclose(state.model, expected)


def test_max_staleness_drops_only_older_updates() -> None:
    spec = FedBuff(max_staleness=2)
    assert spec.accepts(2) and not spec.accepts(3)
    assert FedBuff().accepts(10**6)


def test_an_easgd_node_and_the_center_move_by_one_elastic_difference() -> None:
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    center = {"w": torch.tensor([0.0, 2.0, -1.0]), "steps": torch.tensor(7)}
    trained = {"w": torch.tensor([4.0, 2.0, 1.0]), "steps": torch.tensor(9)}
    reply = elastic_exchange(trained, center, context, rho=0.25)
    own = context.state.array_records[ELASTIC_MODEL].to_torch_state_dict()
    # The node keeps its model pulled a quarter of the gap toward the center; the reply
    # moves the center a quarter of the gap toward the node.
    torch.testing.assert_close(own["w"], torch.tensor([3.0, 2.0, 0.5]))
    torch.testing.assert_close(reply["w"], torch.tensor([1.0, 2.0, -0.5]))
    torch.testing.assert_close(own["w"] + reply["w"], trained["w"] + center["w"])
    assert int(own["steps"]) == int(reply["steps"]) == 9  # integer buffers are not mixed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["crypto=ckks"], "crypto=ckks cannot run strategy=fedasync"),
        (["privacy=central"], "central DP noises one aggregate"),
        (
            ["privacy=dp_sgd", "privacy.noise_multiplier=null", "privacy.target_epsilon=3"],
            "target_epsilon cannot calibrate",
        ),
        (["strategy.alpha=0"], "strategy.alpha=0.0 must be in (0, 1]"),
        (["strategy.staleness=cubic"], "must be one of: constant, polynomial, hinge"),
        (["time_budget_s=0"], "time_budget_s=0.0 must be > 0"),
        (
            ["strategy=easgd", "strategy.delay_compensation=0.5"],
            "must be 0 with easgd",
        ),
    ],
)
def test_settings_an_asynchronous_run_cannot_use_are_refused(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(["strategy=fedasync", *overrides])


def test_an_easgd_node_trains_its_own_model_and_replies_the_elastic_step() -> None:
    """The node-side hooks the shared train handler calls: EASGD trains the node's own
    model from its second exchange on; other strategies train the global model."""
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    spec = Easgd(rho=0.5)
    model = torch.nn.Linear(2, 1)
    received = {k: v.clone() for k, v in model.state_dict().items()}
    center = spec.local_start(model, context)  # first exchange: no own model yet
    torch.testing.assert_close(center, received)
    trained = {k: v + 2.0 for k, v in received.items()}
    reply = spec.local_reply(trained, center, context)
    torch.testing.assert_close(reply["weight"], received["weight"] + 1.0)
    # The next exchange trains the node's own model (half-way back), not the new center.
    fresh = torch.nn.Linear(2, 1)
    spec.local_start(fresh, context)
    torch.testing.assert_close(fresh.state_dict()["weight"], received["weight"] + 1.0)
    plain = FedAsync()
    assert plain.local_start(fresh, context) is None
    assert plain.local_reply(trained, None, context) is trained
