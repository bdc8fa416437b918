"""Central DP against a server-side observer: the ε booked must match the noise released.

Two attacks. (1) Fewer replies than sampled: Flower sizes the noise σ·C/m for the m it
sampled, so averaging m' < m replies gives each user a noise multiplier of σ·m'/m while
the ledger booked σ. (2) The noise came from NumPy's global generator, whose state sat
in the checkpoint: replaying that state recovered the round's noise exactly.
Each test drives the real Flower wrappers (FedAvg inside fedpriv's central-DP wrapper).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedpriv.privacy import PRIVACY, Central
from fedpriv.privacy.accounting import gaussian_epsilon
from fedpriv.privacy.central import released_noise_multiplier
from fedpriv.privacy.ledger import ServerLedger
from fedpriv.strategies.horizontal import HORIZONTAL_STRATEGIES

pytestmark = pytest.mark.usefixtures("task_identity")

SAMPLED, SIGMA, CLIP, SIZE = 10, 0.8, 0.5, 200_000


class Grid:
    """The few grid calls FedAvg's configure_train makes (ten nodes, nothing sent)."""

    def get_node_ids(self) -> list[int]:
        return list(range(1, SAMPLED + 1))

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)


def central(**params) -> Central:
    base = {"name": "central", "noise_multiplier": SIGMA, "clipping_norm": CLIP}
    return PRIVACY.create({**base, **params}, "privacy")


def wrapped(spec: Central):
    fedavg = HORIZONTAL_STRATEGIES.create({"name": "fedavg"}).build(weighted_by_key="dp-weight")
    strategy = spec.wrap_strategy(fedavg, SAMPLED)
    zeros = ArrayRecord({"w": Array(np.zeros(SIZE, np.float32))})
    strategy.configure_train(1, zeros, ConfigRecord(), Grid())
    return strategy


def unchanged_reply(node: int) -> Message:
    """A client whose update is constant and tiny (below the clipping norm): the
    aggregate's spread is the noise std the server really added. (Not zero: Flower's
    server-side clipping divides by the update's norm.)"""
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.full(SIZE, 1e-6, np.float32))}),
            "metrics": MetricRecord({"dp-weight": 1, "num-examples": 10}),
        }
    )
    return Message(content, dst_node_id=node, message_type="train")


def released(spec: Central, replies: int) -> tuple[np.ndarray | None, float | None]:
    strategy = wrapped(spec)
    arrays, _ = strategy.aggregate_train(1, [unchanged_reply(n) for n in range(replies)])
    noise = None if arrays is None else arrays["w"].numpy()
    return noise, released_noise_multiplier(strategy)


def exact_epsilon(sigmas: list[float], delta: float) -> float:
    """One release per σ, composed exactly (tests/unit/test_central_accounting.py checks
    this against the privacy loss's definition and Opacus' PRV accountant)."""
    return gaussian_epsilon([(sigma, 1.0, 1) for sigma in sigmas], delta)


def test_two_of_ten_replies_book_the_noise_each_user_really_got():
    noise, sigma = released(central(shortfall="account"), replies=2)
    assert noise is not None
    # The noise is sized for ten: std σ·C/10. Two users share it: σ_eff = σ·2/10.
    assert noise.std() == pytest.approx(SIGMA * CLIP / SAMPLED, rel=0.02)
    assert sigma == pytest.approx(SIGMA * 2 / SAMPLED)
    ledger = ledger_after([(2, "account")] + [(SAMPLED, "account")] * 9)
    expected = exact_epsilon([SIGMA * 2 / SAMPLED] + [SIGMA] * 9, ledger.central.delta_for(SAMPLED))
    # Before the fix the ledger booked σ for all ten releases (ε 16.2 instead of 42.7).
    assert ledger.user_level_epsilon() == pytest.approx(expected, rel=1e-9)
    assert ledger.user_level_epsilon() > exact_epsilon([SIGMA] * 10, 1 / (10 * SAMPLED)) * 2


def ledger_after(rounds: list[tuple[int, str]]) -> ServerLedger:
    class Config:
        num_clients = SAMPLED
        privacy = central(shortfall=rounds[0][1])

    ledger = ServerLedger(Config())
    for replies, mode in rounds:
        ledger.released(released(central(shortfall=mode), replies)[1])
    return ledger


def test_rescale_sizes_the_noise_for_the_replies_averaged():
    noise, sigma = released(central(shortfall="rescale"), replies=2)
    assert noise is not None and noise.std() == pytest.approx(SIGMA * CLIP / 2, rel=0.02)
    assert sigma == SIGMA


def test_refuse_releases_nothing_and_books_nothing():
    noise, sigma = released(central(shortfall="refuse"), replies=2)
    assert noise is None and sigma is None
    full, sigma = released(central(shortfall="refuse"), replies=SAMPLED)
    assert full is not None and sigma == SIGMA
    assert ledger_after([(2, "refuse"), (SAMPLED, "refuse")]).releases == 1


def test_adaptive_clipping_books_the_recombined_multiplier():
    spec = central(clipping="adaptive", shortfall="account", clipped_count_stddev=2.0)
    _, sigma = released(spec, replies=5)
    # Andrew et al.: σ_Δ = (z⁻² − (2σ_b)⁻²)^-½ on the update; halve it, recombine.
    update = (SIGMA**-2 - (2 * 2.0) ** -2) ** -0.5 * 5 / SAMPLED
    assert sigma == pytest.approx((update**-2 + (2 * 2.0) ** -2) ** -0.5, rel=1e-12)


def test_an_observer_with_numpy_state_cannot_replay_the_noise():
    """Before the fix Flower drew the noise from np.random: whoever read its state (it
    was saved in checkpoint.pkl) redrew the exact noise and subtracted it."""
    np.random.seed(1234)
    state = np.random.get_state()
    noise, _ = released(central(), replies=SAMPLED)
    np.random.set_state(state)
    replay = np.random.normal(0, SIGMA * CLIP / SAMPLED, SIZE).astype(np.float32)
    assert noise is not None
    assert not np.allclose(noise, replay)
    assert abs(np.corrcoef(noise, replay)[0, 1]) < 0.02
    np.random.seed(1234)
    again, _ = released(central(), replies=SAMPLED)
    assert not np.allclose(noise, again)  # the same global seed gives other noise


def test_unknown_shortfall_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"shortfall.*rescale, account, refuse"):
        central(shortfall="ignore")
