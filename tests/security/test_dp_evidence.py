"""A reply under privacy=dp_sgd must carry the DP-SGD ledger entry the client's ledger
mod adds; missing or impossible values are not evidence of private training. (The
simulation with a plain Flower ClientApp that applies no DP is in
tests/integration/test_privacy_simulation.py.)"""

from __future__ import annotations

import math

import pytest

from fedpriv.privacy import PRIVACY

SETTINGS = {"dp_sgd": {"noise_multiplier": 1.1}, "dp_sgd+central": {}, "none": {}, "central": {}}
HONEST = {"dp-noise-multiplier": 1.1, "dp-sample-rate": 1 / 93, "dp-steps": 93,
          "epsilon": 0.8, "delta": 1e-4, "num-examples": 930}  # fmt: skip


@pytest.mark.parametrize("name", ["dp_sgd", "dp_sgd+central"])
def test_a_ledger_entry_is_evidence(name):
    assert (
        PRIVACY.create({"name": name, **SETTINGS[name]}, "privacy").evidence_problem(HONEST) is None
    )


@pytest.mark.parametrize("name", ["none", "central"])
def test_modes_without_client_side_dp_ask_for_nothing(name):
    assert PRIVACY.create({"name": name, **SETTINGS[name]}, "privacy").evidence_problem({}) is None


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"dp-steps": None}, "missing dp-steps"),
        ({"epsilon": None, "delta": None}, "missing epsilon, delta"),
        ({"epsilon": math.nan}, "not a finite number"),
        ({"dp-noise-multiplier": 0.0}, "impossible"),
        ({"dp-sample-rate": 1.5}, "impossible"),
        ({"epsilon": -1.0}, "impossible"),
        ({"delta": 1.0}, "impossible"),
        ({"dp-steps": -3}, "not a step count"),
        ({"dp-steps": 2.5}, "not a step count"),
    ],
)
def test_missing_or_impossible_entries_are_refused_with_the_reason(change, reason):
    metrics = {k: v for k, v in {**HONEST, **change}.items() if v is not None}
    problem = PRIVACY.create(
        {"name": "dp_sgd", "noise_multiplier": 1.1}, "privacy"
    ).evidence_problem(metrics)
    assert problem is not None and reason in problem
