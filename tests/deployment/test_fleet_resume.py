"""A deployed run whose ServerApp is killed mid-run continues from its checkpoint on the
same fleet (TLS, node authentication): ``fedpriv run resume=DIR`` resubmits it, every
node gets its own privacy state back, and ε composes as in an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedpriv import load_config, run
from fedpriv.deployment import LocalFleet
from fedpriv.results import Result
from fedpriv.runtime.checkpoint import Checkpoint

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

HORIZONTAL = [
    "data=digits",
    "model=logreg",
    "num_clients=3",
    "strategy=fedavg",
    "privacy=dp_sgd",
    "privacy.target_epsilon=null",
    "privacy.noise_multiplier=1.0",
    "rounds=2",
    "engine.torch_threads=1",
]


def fedpriv(arguments: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "fedpriv"), "run", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the executor's forks: running ServerApps)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_a_killed_server_app_resumes_on_the_fleet_and_epsilon_composes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with LocalFleet(tmp_path, nodes=3) as fleet:
        assert fleet.superlink is not None
        first = fedpriv([*HORIZONTAL, *fleet.engine_overrides(), f"hydra.run.dir={out}"])
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.npz").is_file():
            assert first.poll() is None, first.communicate()[0]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        server_apps = children(fleet.superlink.executor.pid)
        assert server_apps, "no ServerApp process on the SuperLink"
        for pid in server_apps:  # the ServerApp dies as a crashed server would
            os.kill(pid, signal.SIGKILL)
        first.kill()
        first.communicate()
        saved = Checkpoint.load(out)
        assert saved is not None
        assert not (out / "summary.json").exists()

        resumed = fedpriv([f"resume={out}", f"hydra.run.dir={tmp_path / 'hydra'}"])
        output, _ = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, output

    result = Result.load(out)
    assert result.summary["status"] == "completed"
    assert [r["round"] for r in result.history] == [1, 2]
    assert result.history[: saved.round] == saved.history  # kept, not run again
    # Nodes continued from their own accountant state: ε after round 2 is what an
    # uninterrupted run of the same experiment reports, never less. A device that had
    # already trained round 2 when the ServerApp died is charged for that release too
    # (its own copy of its spending, in the fleet's state-dir): three rounds' ε.
    local = run(
        load_config([*HORIZONTAL, "rounds=3", "engine=inprocess", f"output_dir={tmp_path / 'l'}"])
    )
    epsilons = [{c["partition-id"]: c["epsilon"] for c in r["clients"]} for r in local.history]
    assert {c["partition-id"]: c["epsilon"] for c in result.history[0]["clients"]} == (
        pytest.approx(epsilons[0])
    )
    for client in result.history[1]["clients"]:
        partition = client["partition-id"]
        uninterrupted, with_lost_round = epsilons[1][partition], epsilons[2][partition]
        assert client["epsilon"] in (
            pytest.approx(uninterrupted),
            pytest.approx(with_lost_round),
        ), (partition, client["epsilon"], uninterrupted, with_lost_round)


def test_a_superlink_restart_resumes_and_no_device_is_charged_less(tmp_path: Path) -> None:
    """The server reboots after round 1: the SuperLink (its state in memory), its
    ServerApp and, as their supervisor restarts them, the devices' SuperNodes; then
    ``fedpriv run resume=DIR``. Every device keeps its own record of its spending."""
    out = tmp_path / "run"
    three = [*HORIZONTAL, "rounds=3", "engine.round_timeout_s=30"]
    with LocalFleet(tmp_path, nodes=3) as fleet:
        first = fedpriv([*three, *fleet.engine_overrides(), f"hydra.run.dir={out}"])
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.npz").is_file():
            assert first.poll() is None, first.communicate()[0]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        fleet.restart()
        first.communicate(timeout=300)  # its SuperLink is gone: it ends
        assert not (out / "summary.json").exists()
        resumed = fedpriv([f"resume={out}", f"hydra.run.dir={tmp_path / 'hydra'}"])
        output, _ = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, output

    result = Result.load(out)
    assert result.summary["status"] == "completed"
    assert [r["round"] for r in result.history] == [1, 2, 3]
    local = run(
        load_config([*HORIZONTAL, "rounds=4", "engine=inprocess", f"output_dir={tmp_path / 'l'}"])
    )
    epsilons = [{c["partition-id"]: c["epsilon"] for c in r["clients"]} for r in local.history]
    for client in result.history[2]["clients"]:  # three rounds, or four with a lost one
        partition = client["partition-id"]
        assert client["epsilon"] in (
            pytest.approx(epsilons[2][partition]),
            pytest.approx(epsilons[3][partition]),
        ), (partition, client["epsilon"])
