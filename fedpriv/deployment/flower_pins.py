"""Pins on the Flower code that fedpriv patches: a patch applies to the source it was
written for and to nothing else.

Each patch names the Flower functions it changes or relies on, with the SHA-256 of their
source in the pinned Flower (``flwr<1.42``). A different source, after an upgrade, stops
the process before it starts with a :class:`FlowerChanged` naming the function; the unit
tests (``tests/unit/test_flower_patches.py``) fail the same way first.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping

from fedpriv.errors import FedprivError


class FlowerChanged(FedprivError, RuntimeError):
    """The installed Flower is not the code a fedpriv patch was written for."""


def source_sha256(function: object) -> str:
    """The SHA-256 of a function's source text."""
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()  # type: ignore[arg-type]


def check_pins(patch: str, pins: Mapping[str, tuple[object, str]]) -> None:
    """Raise :class:`FlowerChanged` unless every ``name: (function, sha256)`` in ``pins``
    has the pinned source; ``patch`` names the fedpriv module that relies on them."""
    changed = [
        name for name, (function, pinned) in pins.items() if source_sha256(function) != pinned
    ]
    if changed:
        raise FlowerChanged(
            f"{', '.join(changed)} in the installed flwr differ from the source {patch} was "
            "written for; re-read them, then update the patch and its pins (or run Flower's "
            "unpatched processes)"
        )
