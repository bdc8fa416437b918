"""The pieces of the study analyses that read more than a run's final accuracy: where a
run stands at a communication budget, and when it first reaches an accuracy."""

from __future__ import annotations

from fedpriv.experiments.batch_size import first_reaching
from fedpriv.experiments.swarm_vs_fedavg import accuracy_within

HISTORY = [
    {"round": 1, "accuracy": 0.5, "bytes_up": 100, "bytes_down": 50, "elapsed": 1.0},
    {"round": 2, "accuracy": 0.8, "bytes_up": 100, "bytes_down": 50, "elapsed": 2.5},
    {"round": 3, "accuracy": 0.9, "bytes_up": 100, "bytes_down": 50, "elapsed": 4.0},
]


def test_accuracy_within_a_budget_is_the_last_round_that_fits():
    assert accuracy_within(HISTORY, 450) == 0.9  # all three rounds: 450 bytes
    assert accuracy_within(HISTORY, 449) == 0.8  # the third round passes the budget
    assert accuracy_within(HISTORY, 300) == 0.8
    assert accuracy_within(HISTORY, 149) is None  # the first round alone sends more


def test_time_to_accuracy_is_the_first_round_that_reaches_it():
    assert first_reaching(HISTORY, 0.8) == (2, 2.5)
    assert first_reaching(HISTORY, 0.85) == (3, 4.0)
    assert first_reaching(HISTORY, 0.95) is None
    assert first_reaching([{"round": 1, "accuracy": None, "elapsed": 1.0}], 0.1) is None
