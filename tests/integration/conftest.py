"""Fixtures for real simulations."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session", autouse=True)
def one_ray_per_session() -> Iterator[None]:
    """Every simulation of the session on one Ray instance, started as Flower's backend
    starts it (Flower starts Ray only when none runs, and stops it after each run; its
    stop is held back until the session ends). Each simulation still creates and kills
    its own ClientApp actors. Saves Ray's start and stop, seconds per simulation."""
    import ray

    from fedpriv.runtime.simulation import ENVIRONMENT

    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    pythonpath = os.pathsep.join(sys.path)
    ray.init(
        num_cpus=os.cpu_count(),
        num_gpus=0,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )
    shutdown = ray.shutdown
    ray.shutdown = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        yield
    finally:
        ray.shutdown = shutdown  # type: ignore[assignment]
        shutdown()


@pytest.fixture
def register_for_test() -> Iterator[Callable[[Any, str, type], None]]:
    """``register_for_test(registry, name, cls)``: a test-only spec or family, registered
    for one test and shipped to Ray's workers by value (they cannot import tests/)."""
    import ray.cloudpickle

    added = []

    def register(registry: Any, name: str, cls: type) -> None:
        module = sys.modules[cls.__module__]
        ray.cloudpickle.register_pickle_by_value(module)
        registry.register(name)(cls)
        added.append((registry, name, module))

    yield register
    for registry, name, module in added:
        registry._specs.pop(name)
        ray.cloudpickle.unregister_pickle_by_value(module)
