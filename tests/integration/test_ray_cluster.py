"""More clients than one machine holds: a run attaches to a running multi-node Ray
cluster (``engine.ray_address``) and its clients run on every node. Shown with two Ray
nodes on this machine, each its own ``ray start`` process with one CPU; fedpriv leaves
the cluster running when it detaches, and a local run after it starts its own Ray."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import ray_node_app

from fedpriv import load_config, run
from fedpriv.runtime import warm_ray

pytestmark = [pytest.mark.simulation, pytest.mark.processes, pytest.mark.slow]

RAY = Path(sys.executable).with_name("ray")
SMALL = ["num_clients=4", "rounds=2", "data=digits", "model=logreg"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_start(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``ray start --block`` (one CPU) as a child process; returns once its node is up."""
    command = [str(RAY), "start", "--block", "--num-cpus=1", "--disable-usage-stats", *args]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while b"Ray runtime started" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"`ray start {' '.join(args)}` did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a ``ray start --block`` process by its PID (it stops what it started)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def two_node_cluster() -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A Ray head and a second Ray node on 127.0.0.1, one CPU each: its address and the
    two ``ray start`` processes. A short temp dir of its own (Ray's socket paths must
    stay under 108 characters, and other Ray instances here keep theirs in /tmp/ray)."""
    temp = Path(tempfile.mkdtemp(prefix="fpray-", dir="/tmp"))
    address = f"127.0.0.1:{free_port()}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        head = ["--head", f"--port={address.split(':')[1]}", "--node-ip-address=127.0.0.1"]
        head += ["--include-dashboard=false", f"--temp-dir={temp / 'ray'}"]
        processes.append(ray_start(temp / "head.log", *head))
        processes.append(
            ray_start(temp / "node.log", f"--address={address}", "--node-ip-address=127.0.0.1")
        )
        yield address, processes
    finally:
        warm_ray.shutdown()  # detach first: the warm pool's actors live in the cluster
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_run_attached_to_a_two_node_cluster_runs_clients_on_both(two_node_cluster, tmp_path):
    address, processes = two_node_cluster
    config = load_config([*SMALL, f"engine.ray_address={address}", f"output_dir={tmp_path / 'a'}"])
    result = run(config, client_app=ray_node_app.app)
    assert result.status == "completed" and result.final["accuracy"] > 0.5

    cluster_nodes = {ray_node_app.ray_node_number(n["NodeID"]) for n in ray.nodes() if n["Alive"]}
    assert len(cluster_nodes) == 2
    ran_on = {c["ray-node"] for record in result.history for c in record["clients"]}
    assert ran_on == cluster_nodes  # every node of the cluster trained clients
    assert len([c for r in result.history for c in r["clients"]]) == 4 * 2

    # Back to a local run: fedpriv detaches (and stops only its own actors); the
    # cluster it attached to keeps running, with both nodes.
    local = run(load_config([*SMALL, "engine.num_cpus=1", f"output_dir={tmp_path / 'b'}"]))
    assert local.status == "completed"
    assert ray.get_runtime_context().gcs_address != address
    assert all(process.poll() is None for process in processes)
    warm_ray.shutdown()
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        assert ray.cluster_resources().get("CPU") == 2  # our actors released their CPUs
    finally:
        ray.shutdown()
