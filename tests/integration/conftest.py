"""Fixtures for whole runs: test-only specs (the misbehaving families, selections and
crypto in this folder's plain modules), the results-directory check, and a run killed
at a known point. Tests get these from here, never by importing another test file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faulty_family
import faulty_swarm
import faulty_vertical
import plain_flower_client
import pytest
import stalled_device
import tampering_crypto
import yaml
from flwr.clientapp import ClientApp

from fedpriv import Result
from fedpriv.crypto import CRYPTO
from fedpriv.families import FAMILIES
from fedpriv.selection import SELECTIONS

#: Test-only specs by the name a config selects them with: (registry, class).
TEST_SPECS: dict[str, tuple[Any, type]] = {
    "faulty_horizontal": (FAMILIES, faulty_family.FaultyHorizontal),
    "faulty_async": (FAMILIES, faulty_family.FaultyAsyncHorizontal),
    "crashing_swarm": (FAMILIES, faulty_swarm.Crashing),
    "late_swarm": (FAMILIES, faulty_swarm.Late),
    "truncating_vertical": (FAMILIES, faulty_vertical.Truncating),
    "crashing_vertical": (FAMILIES, faulty_vertical.Crashing),
    "silent_vertical": (FAMILIES, faulty_vertical.Silent),
    "stalled_device": (SELECTIONS, stalled_device.StalledDevice),
    "tampering_ckks": (CRYPTO, tampering_crypto.TamperingCkks),
}


@pytest.fixture
def plain_flower_app() -> ClientApp:
    """A ClientApp written as Flower's documentation writes one, without fedpriv and
    without DP (plain_flower_client.py)."""
    return plain_flower_client.app


#: The round after whose checkpoint :func:`kill_during_run` kills the run.
KILL_AFTER = 2


@pytest.fixture
def register_spec(request) -> Iterator[Callable[[str], str]]:
    """``register_spec("faulty_horizontal")``: a test-only spec from :data:`TEST_SPECS`,
    registered for one test; returns its name. Under Ray its module is shipped to the
    workers by value (they cannot import tests/)."""
    on_ray = request.node.get_closest_marker("simulation") is not None
    added: list[tuple[Any, str, Any]] = []

    def register(name: str) -> str:
        registry, cls = TEST_SPECS[name]
        module = sys.modules[cls.__module__]
        if on_ray:
            import ray.cloudpickle

            ray.cloudpickle.register_pickle_by_value(module)
        registry.register(name)(cls)
        added.append((registry, name, module))
        return name

    yield register
    for registry, name, module in added:
        registry.unregister(name)
        if on_ray:
            import ray.cloudpickle

            ray.cloudpickle.unregister_pickle_by_value(module)


SUMMARY_KEYS = {
    "strategy", "family", "rounds", "final", "bytes", "seconds", "privacy", "crypto",
    "dataset", "num_clients", "seed", "stop_reason", "status",
}  # fmt: skip
ROUND_KEYS = {
    "round", "accuracy", "loss", "bytes_up", "bytes_down", "seconds", "clients", "contributors",
}  # fmt: skip


def check_run_directory(result: Result, clients: int, rounds: int) -> None:
    """The results directory holds the documented files with the documented fields."""
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "clients.json"} <= files
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS and summary["rounds"] == rounds
    assert summary["status"] == "completed" and summary["stop_reason"] is None
    assert summary["privacy"] is None and summary["crypto"] is None
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == rounds
    for number, line in enumerate(lines, start=1):
        record = json.loads(line)
        assert set(record) >= ROUND_KEYS and record["round"] == number
        assert 0.0 <= record["accuracy"] <= 1.0
        assert record["bytes_up"] > 0 and record["bytes_down"] > 0
        assert record["contributors"] > 0
    histograms = json.loads((result.run_dir / "clients.json").read_text())["label_histograms"]
    assert len(histograms) == clients
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["strategy"]["name"] == summary["strategy"]


@pytest.fixture(name="check_run_directory")
def check_run_directory_fixture() -> Callable[[Result, int, int], None]:
    """``check_run_directory(result, clients, rounds)``: see :func:`check_run_directory`."""
    return check_run_directory


def kill_during_run(run_dir: Path, overrides: list[str]) -> int:
    """The experiment (``killed_run.py`` with ``overrides``) in a new process group,
    SIGKILLed after its round-``KILL_AFTER`` checkpoint; returns that round."""
    command = [
        sys.executable, str(Path(__file__).with_name("killed_run.py")), *overrides,
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "KILL_AFTER": str(KILL_AFTER), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, start_new_session=True
    )
    assert done.returncode == -9, done.stderr[-3000:]
    return KILL_AFTER


@pytest.fixture(name="kill_during_run")
def kill_during_run_fixture() -> Callable[[Path, list[str]], int]:
    """``kill_during_run(run_dir, overrides)``: see :func:`kill_during_run`."""
    return kill_during_run
