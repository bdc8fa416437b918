"""Runs in one process share Ray and its warm ClientApp actors (the second run skips
Ray's start-up and the actors' imports), give the same results, and leave nothing
running once the process ends."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from fedpriv import load_config, run
from fedpriv.runtime import warm_ray

pytestmark = pytest.mark.simulation

SMALL = ["num_clients=3", "rounds=2", "model=logreg", "data=wine"]


def test_a_second_run_reuses_ray_and_the_actor_pool(tmp_path) -> None:
    first = run(load_config([*SMALL, f"output_dir={tmp_path / 'a'}"]))
    pool = warm_ray._warm["pool"]
    actors = list(pool.pool)
    second = run(load_config([*SMALL, f"output_dir={tmp_path / 'b'}"]))
    assert warm_ray._warm["pool"] is pool and sorted(map(id, pool.pool)) == sorted(map(id, actors))
    assert [r["accuracy"] for r in second.history] == [r["accuracy"] for r in first.history]
    other = run(load_config([*SMALL, "engine.cpus_per_client=0.5", f"output_dir={tmp_path / 'c'}"]))
    assert warm_ray._warm["pool"] is not pool  # other resources: a pool of their own
    assert other.final["accuracy"] is not None
    warm_ray.shutdown()
    import ray

    assert not ray.is_initialized() and "pool" not in warm_ray._warm


@pytest.mark.processes
def test_nothing_of_ray_outlives_the_process(tmp_path) -> None:
    """Two runs and a normal exit: Ray, its agents and the actors all end with it."""
    script = (
        "import json, psutil, ray\n"
        "from fedpriv import load_config, run\n"
        f"for k in range(2): run(load_config({SMALL!r} + [f'output_dir={tmp_path}/' + str(k)]))\n"
        "node = ray._private.worker._global_node\n"
        "raylet = psutil.Process(node.all_processes['raylet'][0].process.pid)\n"
        "pids = [raylet.pid, *(p.pid for p in raylet.children(recursive=True))]\n"
        "print(json.dumps(pids))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True
    )
    pids = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(pids) > 1  # the raylet and what it started (actors, agents)
    alive = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            process.wait(timeout=30)  # a process on its way out gets a moment
        except psutil.NoSuchProcess:
            continue
        except psutil.TimeoutExpired:
            alive.append(pid)
            process.kill()
    assert not alive, f"Ray processes outlived the run's process: {alive}"
