"""A horizontal family whose ClientApps carry one extra mod, outermost: a client that
runs modified code, for the attacks in tests/security/."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from flwr.app import Message

from fedpriv.families import FAMILIES
from fedpriv.strategies.base import Setup
from fedpriv.strategies.horizontal import Horizontal


@contextlib.contextmanager
def hostile_family(name: str, mod: Callable[..., Message]) -> Iterator[str]:
    """The horizontal family with ``mod`` outermost on every ClientApp (the mods decide
    which partition misbehaves), registered as family ``name`` while the block runs."""

    class Hostile(Horizontal):
        family = name

        def prepare(self) -> Setup:
            setup = super().prepare()
            setup.client_mods = [*setup.client_mods, mod]
            return setup

    FAMILIES.register(name)(Hostile)
    try:
        yield f"family.name={name}"
    finally:
        FAMILIES.unregister(name)
