"""The registry of specs: a name once, a removed name free again, an unknown name an
error that lists the choices."""

from __future__ import annotations

import dataclasses

import pytest

from fedpriv.errors import ConfigError
from fedpriv.registry import Registry, Spec


@dataclasses.dataclass(frozen=True)
class Shape(Spec):
    sides: int = 3


def test_a_name_is_registered_once_and_free_again_after_unregister():
    shapes: Registry[Shape] = Registry("shape")
    shapes.register("triangle")(Shape)
    with pytest.raises(ValueError, match="'triangle' is registered twice"):
        shapes.register("triangle")(Shape)
    assert shapes.create({"name": "triangle", "sides": 3}).sides == 3
    shapes.unregister("triangle")
    assert "triangle" not in shapes
    shapes.register("triangle")(Shape)
    assert shapes.names() == ["triangle"]


def test_unregistering_an_unknown_name_lists_the_choices():
    shapes: Registry[Shape] = Registry("shape")
    shapes.register("square")(Shape)
    with pytest.raises(ConfigError, match="unknown shape 'circle'; choose one of: square"):
        shapes.unregister("circle")
