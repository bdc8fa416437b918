"""Central DP's ε is exact for what was released: Gaussian releases without sampling,
composed exactly. Checked against the definition (the hockey-stick divergence of the
privacy loss, integrated numerically), against Opacus' PRV accountant (an independent
numerical accountant that bounds ε from above), and against RDP (looser)."""

from __future__ import annotations

import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from scipy import integrate, stats

from fedpriv import load_config
from fedpriv.privacy.accounting import EXACT_GAUSSIAN, gaussian_epsilon
from fedpriv.privacy.ledger import ServerLedger


def hockey_stick_delta(history: list[tuple[float, float, int]], eps: float) -> float:
    """δ(ε) = E[(1 − e^(ε − L))₊] for the privacy loss L of the composed releases, by
    quadrature: each release at σ adds an independent N(1/(2σ²), 1/σ²) loss."""
    mean = sum(n / (2 * s**2) for s, _, n in history)
    std = math.sqrt(sum(n / s**2 for s, _, n in history))
    loss = stats.norm(mean, std)
    value, _ = integrate.quad(
        lambda x: -math.expm1(eps - x) * loss.pdf(x), eps, mean + 40 * std, limit=200
    )
    return value


def opacus(accountant, history, delta: float, **kwargs) -> float:
    acct = accountant()
    acct.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # PRV's log(1 − q) at q = 1
        return float(acct.get_epsilon(delta=delta, **kwargs))


@settings(max_examples=25, deadline=None)
@given(
    sigmas=st.lists(st.floats(0.3, 3.0), min_size=1, max_size=4),
    counts=st.lists(st.integers(1, 20), min_size=4, max_size=4),
    delta=st.sampled_from([1e-2, 1e-4, 1e-6]),
)
def test_epsilon_is_the_root_of_the_exact_privacy_curve(sigmas, counts, delta):
    history = [(s, 1.0, n) for s, n in zip(sigmas, counts, strict=False)]
    eps = gaussian_epsilon(history, delta)
    assert eps > 0
    assert hockey_stick_delta(history, eps) == pytest.approx(delta, rel=1e-6)


@pytest.mark.parametrize(
    ("history", "delta"),
    [
        ([(0.8, 1.0, 5)], 1e-2),
        ([(0.8, 1.0, 5)], 1e-5),
        ([(0.16, 1.0, 1), (0.8, 1.0, 9)], 1e-2),  # one release at σ·m'/m (a shortfall)
        ([(2.0, 1.0, 50)], 1e-5),
    ],
)
def test_opacus_prv_bounds_it_from_above_and_rdp_is_looser(history, delta):
    eps = gaussian_epsilon(history, delta)
    prv = opacus(PRVAccountant, history, delta, eps_error=1e-3)
    assert eps <= prv < eps + 0.01
    assert opacus(RDPAccountant, history, delta) > eps * 1.04


def test_the_issues_example_is_nine_point_six_nine_not_eleven():
    """σ = 0.8, five releases, δ = 0.01: RDP said 11.03."""
    assert gaussian_epsilon([(0.8, 1.0, 5)], 0.01) == pytest.approx(9.688, abs=1e-3)
    assert opacus(RDPAccountant, [(0.8, 1.0, 5)], 0.01) == pytest.approx(11.03, abs=1e-2)


def test_nothing_released_is_zero_and_subsampled_releases_are_refused():
    assert gaussian_epsilon([], 1e-5) == 0.0
    with pytest.raises(ValueError, match="without subsampling"):
        gaussian_epsilon([(1.0, 0.1, 3)], 1e-5)


def test_the_ledger_reports_the_exact_epsilon_and_names_its_accountant():
    ledger = ServerLedger(load_config(["privacy=central", "num_clients=10"]))
    for _ in range(3):
        ledger.released(0.8)
    summary = ledger.summary()
    assert summary is not None and summary["central_accountant"] == EXACT_GAUSSIAN
    delta = summary["user_level_delta"]
    assert summary["user_level_epsilon"] == gaussian_epsilon([(0.8, 1.0, 3)], delta)
