"""Shared fixtures: small experiment configs that write into pytest's tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import settings

from fedpriv import ExperimentConfig, load_config

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

# The same examples on every run: a red CI means a change broke something.
settings.register_profile("fedpriv", derandomize=True, deadline=None)
settings.load_profile("fedpriv")


@pytest.fixture
def make_config(tmp_path) -> Callable[..., ExperimentConfig]:
    """``make_config("strategy=krum", ...)``: the default config plus overrides, small and fast."""

    def make(*overrides: str) -> ExperimentConfig:
        base = ["num_clients=4", "rounds=2", "model=logreg", f"output_dir={tmp_path / 'run'}"]
        return load_config(overrides=[*base, *overrides])

    return make


@pytest.fixture
def task_identity() -> None:
    """Flower stamps messages with the running task's identity; give a test one."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
