"""A run killed between checkpoints, then resumed, must not forget privacy it spent.

The updates the server received after the last checkpoint were released: whoever runs
the server has them. If the resumed run took each client's accountant back from that
checkpoint, it would train those rounds again with fresh noise and report an ε that
leaves the first releases out. The run here checkpoints every 2 rounds and is
SIGKILLed right after round 3's replies reached the server (between
checkpoints), or round 1's (before the first); it is then resumed. An independent
record of every train reply the server received, before and after the kill
(``tests/integration/killed_run.py``'s ``REPLY_LOG``, read off the messages), goes
through Opacus' own accountant step by step; the ε the resumed run reports must be
that one. Runs on the in-process engine (tests/integration/test_resume.py kills and
resumes a run on Ray).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from opacus.accountants import create_accountant

pytestmark = [pytest.mark.inprocess, pytest.mark.processes]

KILLED_RUN = Path(__file__).parents[1] / "integration" / "killed_run.py"
OVERRIDES = [
    "engine=inprocess", "rounds=4", "num_clients=3", "model=logreg", "strategy=fedavg",
    "strategy.fraction_train=0.6", "privacy=dp_sgd", "checkpoint_every=2",
]  # fmt: skip
ROUNDS, EVERY, PER_ROUND = 4, 2, 2  # 2 of 3 clients train each round


def killed_run(args: list[str], replies: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``killed_run.py`` in its own process group, logging every train reply received."""
    environment = {
        **os.environ, **env, "REPLY_LOG": str(replies), "PYTHONPATH": os.pathsep.join(sys.path),
    }  # fmt: skip
    return subprocess.run(
        [sys.executable, str(KILLED_RUN), *args], env=environment, capture_output=True,
        text=True, timeout=900, start_new_session=True,
    )  # fmt: skip


def opacus_epsilon(replies: list[dict], accountant: str) -> dict[str, float]:
    """Each partition's ε over every step of every reply received, by Opacus alone."""
    accountants: dict[str, object] = defaultdict(lambda: create_accountant(accountant))
    deltas = {}
    for reply in replies:
        partition = str(reply["partition-id"])
        for _ in range(int(reply["dp-steps"])):
            accountants[partition].step(  # type: ignore[attr-defined]
                noise_multiplier=reply["dp-noise-multiplier"], sample_rate=reply["dp-sample-rate"]
            )
        deltas[partition] = reply["delta"]
    return {p: a.get_epsilon(delta=deltas[p]) for p, a in accountants.items()}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "kill_round", [pytest.param(3, id="between-checkpoints"), pytest.param(1, id="before-any")]
)
def test_a_killed_and_resumed_run_counts_every_update_it_released(tmp_path, kill_round):
    run_dir, replies = tmp_path / "run", tmp_path / "replies.jsonl"
    done = killed_run(
        [*OVERRIDES, f"hydra.run.dir={run_dir}"], replies, KILL_AFTER_REPLIES=str(kill_round)
    )
    assert done.returncode == -9, done.stderr[-3000:]
    received = [json.loads(line) for line in replies.open()]
    assert len(received) == PER_ROUND * kill_round  # the kill's round included

    done = killed_run([f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'hydra'}"], replies)
    assert done.returncode == 0, done.stderr[-3000:]
    received = [json.loads(line) for line in replies.open()]
    checkpointed = kill_round // EVERY * EVERY  # the rounds after it ran again
    assert len(received) == PER_ROUND * (kill_round + ROUNDS - checkpointed)

    summary = json.loads((run_dir / "summary.json").read_text())
    expected = opacus_epsilon(received, accountant="prv")
    reported = summary["privacy"]["epsilon_per_client"]
    assert set(reported) == set(expected)
    for partition, epsilon in expected.items():
        assert reported[partition] == pytest.approx(epsilon, rel=1e-6), partition
