"""Reproducible and resumable runs, on real Flower simulations.

One experiment runs three ways: uninterrupted; SIGKILLed (with Ray) right after its
round-2 checkpoint; and that killed run resumed from its directory. The killed run's
first rounds come from another process, so matching them is the reproducibility check
(same config + seed, same metrics); the resumed rounds matching is the resume check.
The experiment exercises every part of a checkpoint: FedAvgM's server momentum (the
Flower strategy's state), sampling 2 of 3 clients a round (random states), DP-SGD
(each client's accountant history, given back to fresh nodes) with noise from the seed.
"""

from __future__ import annotations

import json

import pytest

from fedpriv import load_config, resume, run

pytestmark = [pytest.mark.simulation, pytest.mark.processes]

OVERRIDES = [
    "rounds=4", "num_clients=3", "model=logreg", "strategy=fedavgm",
    "strategy.fraction_train=0.6", "privacy=dp_sgd", "privacy.secure_noise=false",
]  # fmt: skip


def assert_same_rounds(these: list[dict], those: list[dict]) -> None:
    """The same rounds: everything but wall-clock times and node IDs (random per run)."""
    assert len(these) == len(those)
    for a, b in zip(these, those, strict=True):
        assert a["round"] == b["round"]
        assert (a["bytes_up"], a["bytes_down"]) == (b["bytes_up"], b["bytes_down"])
        assert participants(a) == participants(b)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        spent = a["privacy"]["epsilon_per_client"]
        assert spent == pytest.approx(b["privacy"]["epsilon_per_client"], rel=1e-9)


def participants(record: dict) -> list[tuple[int, int]]:
    """Which partitions trained, and how many rounds each had trained (node state)."""
    return sorted((c["partition-id"], c["rounds-trained"]) for c in record["clients"])


def test_killed_run_resumes_to_the_same_metrics_as_an_uninterrupted_one(tmp_path, kill_during_run):
    uninterrupted = run(load_config([*OVERRIDES, f"output_dir={tmp_path / 'whole'}"]))
    killed = tmp_path / "killed"
    kill_after = kill_during_run(killed, OVERRIDES)

    assert not (killed / "summary.json").exists()
    done_before_kill = [json.loads(line) for line in (killed / "metrics.jsonl").open()]
    assert_same_rounds(done_before_kill, uninterrupted.history[:kill_after])
    sampled = [len(r["clients"]) for r in uninterrupted.history]
    assert sampled == [2, 2, 2, 2]

    resumed = resume(killed)
    assert resumed.run_dir == killed and resumed.summary["rounds"] == 4
    assert_same_rounds(resumed.history, uninterrupted.history)
    on_disk = [json.loads(line) for line in (killed / "metrics.jsonl").open()]
    assert [r["round"] for r in on_disk] == [1, 2, 3, 4]
    assert resumed.summary["privacy"]["epsilon_per_client"] == pytest.approx(
        uninterrupted.summary["privacy"]["epsilon_per_client"], rel=1e-9
    )
    # A finished run resumes to itself.
    assert resume(killed).history == resumed.history
