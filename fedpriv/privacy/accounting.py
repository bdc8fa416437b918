"""Opacus accountants, and their history kept in a node's ``context.state``.

An accountant's state is its history of ``(noise_multiplier, sample_rate, steps)``;
storing that list is enough to compose ε across every round a client took part in.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

from flwr.app import ConfigRecord, Context

ACCOUNTANTS = ("prv", "rdp", "gdp")
STATE_KEY = "fedpriv.dp"

History = list[tuple[float, float, int]]


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson sampling rate of one step, as Opacus sets it: 1 / batches per epoch."""
    return 1.0 / math.ceil(num_examples / batch_size)


def compose(history: History, entry: tuple[float, float, int]) -> History:
    """``history`` followed by ``entry``, merged into the last entry when σ and q match
    (as Opacus' accountants do step by step): the same ε, and the accountant's cost
    stays flat however many rounds a client trains."""
    if history and history[-1][:2] == entry[:2]:
        sigma, rate, steps = history[-1]
        return [*history[:-1], (sigma, rate, steps + entry[2])]
    return [*history, entry]


def epsilon(history: Sequence[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """ε spent after ``history`` at ``delta``, by the named Opacus accountant (0 if empty)."""
    if not history:
        return 0.0
    entries = tuple((float(s), float(q), int(n)) for s, q, n in history)
    return _accountant_epsilon(entries, float(delta), accountant)


@functools.lru_cache(maxsize=1024)
def _accountant_epsilon(
    history: tuple[tuple[float, float, int], ...], delta: float, accountant: str
) -> float:
    """Memoized: clients that trained alike share one history, and the PRV accountant
    takes about a second for each (it was most of a DP round's time)."""
    from opacus.accountants import create_accountant  # Opacus loads only where DP runs

    acct = create_accountant(accountant)
    acct.history = list(history)
    return float(acct.get_epsilon(delta=delta))


#: How central DP's releases are composed (the ledger names it in summary.json).
EXACT_GAUSSIAN = "gaussian-exact"


def gaussian_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """The exact ε at ``delta`` of Gaussian releases without subsampling (``(σ, 1,
    count)`` entries): the tightest bound there is, not an upper bound like RDP's.

    Gaussian mechanisms compose exactly into one: releases at multipliers σ_i are
    μ-GDP with μ = √(Σ count_i/σ_i²) (Dong, Roth & Su 2022, Cor. 3.3), and a μ-GDP
    mechanism is (ε, δ)-DP exactly when δ = Φ(−ε/μ + μ/2) − e^ε·Φ(−ε/μ − μ/2) (Balle &
    Wang 2018, Thm. 8). ε is that curve's root at ``delta``.
    """
    from scipy.optimize import brentq
    from scipy.stats import norm

    if any(rate != 1.0 for _, rate, _ in history):
        raise ValueError("gaussian_epsilon composes releases without subsampling (rate 1)")
    if not history:
        return 0.0
    mu = math.sqrt(sum(count / sigma**2 for sigma, _, count in history))

    def excess(eps: float) -> float:  # δ(ε) − delta, decreasing in ε
        tail = math.exp(eps + norm.logcdf(-eps / mu - mu / 2))
        return float(norm.cdf(-eps / mu + mu / 2) - tail - delta)

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
    return float(brentq(excess, 0.0, high, xtol=1e-12, rtol=1e-12))


@functools.lru_cache(maxsize=256)
def calibrated_noise(
    target_epsilon: float, delta: float, rate: float, steps: int, accountant: str
) -> float:
    """σ that spends exactly ``target_epsilon`` over ``steps`` steps (Opacus' binary search).

    Memoized: a pure function of its arguments, asked for again by every round.
    """
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=rate,
            steps=steps,
            accountant=accountant,
        )
    )


def planned_steps(config: Any, num_examples: int) -> int:
    """Noisy steps a client takes over the whole planned training (every round)."""
    per_epoch = math.ceil(num_examples / config.train.batch_size)
    return int(config.strategy.planned_epochs(config) * per_epoch)


def load_history(context: Context) -> History:
    record = context.state.config_records.get(STATE_KEY)
    if record is None:
        return []
    sigmas: Any = record["noise_multipliers"]
    rates: Any = record["sample_rates"]
    steps: Any = record["steps"]
    return [(float(s), float(q), int(n)) for s, q, n in zip(sigmas, rates, steps, strict=True)]


def save_history(context: Context, history: History) -> None:
    context.state[STATE_KEY] = ConfigRecord(
        {
            "noise_multipliers": [float(s) for s, _, _ in history],
            "sample_rates": [float(q) for _, q, _ in history],
            "steps": [int(n) for _, _, n in history],
        }
    )
