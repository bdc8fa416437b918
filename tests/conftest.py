"""Shared fixtures: small experiment configs that write into pytest's tmp_path, and the
engine each test runs its experiments on.

A test marked ``simulation`` runs on Flower's Ray engine (one Ray for the session); one
marked ``inprocess`` runs on fedpriv's in-process engine, and ``make_config`` gives it
``engine=inprocess``. Any other test (a unit test) must not start Ray: starting it fails
the test, so ``make test-fast`` (``-m "not simulation and not deployment and not
processes"``) never does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings

from fedpriv import ExperimentConfig, load_config

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

# The same examples on every run: a red CI means a change broke something.
settings.register_profile("fedpriv", derandomize=True, deadline=None)
settings.load_profile("fedpriv")


@pytest.fixture
def make_config(tmp_path, request) -> Callable[..., ExperimentConfig]:
    """``make_config("strategy=krum", ...)``: the default config plus overrides, small and
    fast; on the in-process engine for a test marked ``inprocess`` (and not ``simulation``,
    which wins: a module of in-process tests can keep one test on Ray)."""
    marked = request.node.get_closest_marker
    engine = ["engine=inprocess"] if marked("inprocess") and not marked("simulation") else []

    def make(*overrides: str) -> ExperimentConfig:
        base = ["num_clients=4", "rounds=2", "model=logreg", f"output_dir={tmp_path / 'run'}"]
        return load_config(overrides=[*base, *engine, *overrides])

    return make


@pytest.fixture
def task_identity() -> None:
    """Flower stamps messages with the running task's identity; give a test one."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


@pytest.fixture(autouse=True)
def engine_for_marker(request, monkeypatch) -> None:
    """Ray for a test marked ``simulation`` (started once, on its first use); for any
    other test, starting Flower's Ray simulation is an error."""
    if request.node.get_closest_marker("simulation"):
        request.getfixturevalue("one_ray_per_session")
        return
    if request.node.get_closest_marker("deployment"):
        return

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(
            "this test started Ray: mark it `simulation`, or run it with engine=inprocess"
        )

    monkeypatch.setattr("fedpriv.runtime.simulation.simulate", refuse)
    monkeypatch.setattr("fedpriv.api.simulate", refuse)


@pytest.fixture(scope="session")
def one_ray_per_session() -> Iterator[None]:
    """Every simulation of the session on one Ray instance and, where their resources
    match, one pool of warm ClientApp actors, as runs in one process share them
    (:mod:`fedpriv.runtime.warm_ray`); stopped when the session ends."""
    yield
    from fedpriv.runtime import warm_ray

    warm_ray.shutdown()
