"""The repo is a Flower app: the real `flwr run <repo> --run-config ...` runs a fedpriv
experiment on Flower's managed local SuperLink (Flower starts it, detached, on the
first `flwr` call; its simulation runs the ClientApps on Ray), as docs/interop.md says.

FLWR_HOME is this test's own (the user's ~/.flwr is untouched) and the SuperLink's port
a free one (nothing else's SuperLink answers). The SuperLink is detached from the test,
so every process started for this FLWR_HOME (SuperLink, SuperExec, the simulation and
its Ray) is found by that variable in its environment and stopped."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from fedpriv import load_config
from fedpriv.deployment.processes import flower_environment, flower_script, free_port
from fedpriv.errors import ConfigError

ROOT = Path(__file__).parents[2]
#: How long a run may take before the test gives up waiting (not an assertion).
RUN_DEADLINE_S = 600


def processes_of(home: Path) -> list[psutil.Process]:
    """Every process whose environment names this FLWR_HOME."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get("FLWR_HOME") == str(home):
                found.append(process)
    return found


def stop(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=20)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def flwr(tmp_path) -> Iterator[tuple[dict[str, str], Path]]:
    """`flwr`'s environment (own FLWR_HOME and local SuperLink ports) and working
    directory; stops whatever it started, however the test ends."""
    home = tmp_path / "flwr-home"
    env = flower_environment(
        {
            "FLWR_HOME": str(home),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "OMP_NUM_THREADS": "1",
        }
    )
    cwd = tmp_path / "work"
    cwd.mkdir()
    try:
        yield env, cwd
    finally:
        stop(processes_of(home))


def flwr_command(env: dict[str, str], cwd: Path, *args: str) -> dict:
    done = subprocess.run(
        [flower_script("flwr"), *args, "--format", "json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def submit(env: dict[str, str], cwd: Path, run_config: str) -> str:
    """`flwr run <repo>` on 3 simulated SuperNodes; the run's id."""
    federation = "num-supernodes=3 client-resources-num-cpus=1"
    started = flwr_command(
        env, cwd, "run", str(ROOT), "--run-config", run_config, "--federation-config", federation
    )
    return str(started["run-id"])


def wait_for(env: dict[str, str], cwd: Path, run_id: str) -> dict:
    """The run as `flwr ls` shows it once it finished."""
    deadline = time.monotonic() + RUN_DEADLINE_S
    while time.monotonic() < deadline:
        (run,) = flwr_command(env, cwd, "ls", "--run-id", run_id)["runs"]
        if run["status"].startswith("finished"):
            return run
        time.sleep(2)
    pytest.fail(f"run {run_id} did not finish within {RUN_DEADLINE_S} s")


@pytest.mark.processes
def test_flwr_run_runs_the_experiment_the_run_config_asks_for(flwr):
    env, cwd = flwr
    run_id = submit(env, cwd, "rounds=2 train.lr=0.1 model='logreg' overrides='data=wine'")
    run = wait_for(env, cwd, run_id)
    assert run["status"] == "finished:completed", run["status-details"]

    # The SuperLink runs in the directory `flwr` first started it from.
    out = cwd / "outputs" / "flwr" / run_id
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (summary["dataset"], summary["model"], summary["rounds"]) == ("wine", "logreg", 2)
    assert summary["num_clients"] == 3  # the federation's SuperNodes
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rounds)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 0.1

    # A bad override fails the run with the error `fedpriv run` gives.
    with pytest.raises(ConfigError) as expected:
        load_config(["strategy=fedprx"])
    failed = wait_for(env, cwd, submit(env, cwd, "overrides='strategy=fedprx'"))
    assert failed["status"] == "finished:failed"
    assert str(expected.value) in failed["status-details"]

    home = Path(env["FLWR_HOME"])
    started = processes_of(home)
    assert any("flower-superlink" in " ".join(p.cmdline()) for p in started)
    stop(started)
    assert processes_of(home) == []
