"""Fixtures for real simulations."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest


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
