"""Ctrl-C, as a real SIGINT to a real run: the first stops the run after the round in
progress with a checkpoint and exit code 130, saying how to resume; the second stops
it at once; nothing the run started is left running. Before, three SIGINTs at round 5
of 300 let the run go on to 300/300 and exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedpriv import resume

pytestmark = pytest.mark.processes

#: Rounds of each run: enough that a run is mid-way when the signal lands, also when a
#: loaded machine delivers it late. Once Ray has started, a Ray round is as quick as an
#: in-process one (~0.02 s): 40 rounds once ended before a late SIGINT arrived.
ROUNDS = 300


def start(run_dir: Path, engine: str) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "fedpriv.experiments.run", f"engine={engine}",
        f"rounds={ROUNDS}", "num_clients=3", "model=logreg", "data=wine",
        "engine.cpus_per_client=1" if engine == "simulation" else "engine.verbose=false",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: what it leaves behind is found
    )  # fmt: skip


def ctrl_c(process: subprocess.Popen[str]) -> None:
    """SIGINT to the run's whole process group, as a terminal sends it on Ctrl-C."""
    os.killpg(process.pid, signal.SIGINT)


def rounds_done(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def wait_for_rounds(process: subprocess.Popen[str], run_dir: Path, count: int) -> None:
    deadline = time.monotonic() + 300  # a bound on waiting, not an assertion on speed
    while rounds_done(run_dir) < count:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never reached its rounds"
        time.sleep(0.05)


def nothing_left(group: int) -> bool:
    """Whether every process of the run's process group has exited."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False


@pytest.mark.parametrize(
    "engine", ["inprocess", pytest.param("simulation", marks=pytest.mark.simulation)]
)
def test_the_first_ctrl_c_stops_after_the_round_with_a_checkpoint(tmp_path, engine):
    run_dir = tmp_path / "run"
    process = start(run_dir, engine)
    wait_for_rounds(process, run_dir, 2)
    ctrl_c(process)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    assert f"resume={run_dir}" in stderr
    assert not (run_dir / "summary.json").exists()  # unfinished: resume continues it
    done = rounds_done(run_dir)
    assert 2 <= done < ROUNDS
    assert nothing_left(process.pid)
    resumed = resume(run_dir)
    assert resumed.status == "completed" and len(resumed.history) == ROUNDS
    assert [r["round"] for r in resumed.history] == list(range(1, ROUNDS + 1))


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir, "inprocess")
    wait_for_rounds(process, run_dir, 1)
    ctrl_c(process)
    ctrl_c(process)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and not (run_dir / "summary.json").exists()
    assert rounds_done(run_dir) < ROUNDS
    assert nothing_left(process.pid)
