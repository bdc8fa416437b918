"""Strategy families by name (``family=<name>``), the registry config validates against.

Config sits below the families in fedpriv's layers (docs/design/architecture.md), so it
never imports one. A family is found through the ``fedpriv.families`` entry points of
the installed distributions (fedpriv's own three in pyproject.toml; a user's package
can add more the same way), loaded the first time the registry is read. A family that
is not installed, a test's for instance, registers itself with ``FAMILIES.register``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, ClassVar

from fedpriv.registry import Registry, Spec

#: The entry point group families are installed under.
ENTRY_POINTS = "fedpriv.families"


class FamilyRegistry(Registry[Any]):
    """A registry that loads the installed families on first use."""

    def __init__(self) -> None:
        super().__init__("family")
        self._loaded = False

    def _ready(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for point in entry_points(group=ENTRY_POINTS):
            if point.name not in self._specs:
                self.register(point.name)(point.load())

    def unknown(self, name: object, key: str | None = None) -> str:
        if not self.names():
            return (
                f"family {name!r}: no strategy family is installed (the fedpriv.families "
                "entry points are missing: a stale fedpriv.egg-info in the working directory, "
                "or fedpriv not installed); reinstall fedpriv: pip install -e ."
            )
        return super().unknown(name, key)


class StrategySpec(Spec):
    """A strategy of any family (``strategy=<name>``): its parameters, its checks, and
    the traits :mod:`fedpriv.compatibility` reads."""

    #: The aggregate is a linear function of the updates (a sum suffices): what
    #: encrypted aggregation can compute.
    linear: ClassVar[bool] = False
    #: The aggregate is the uniform mean of the clipped updates, then post-processing:
    #: what central DP's noise is sized for.
    uniform_mean: ClassVar[bool] = False
    #: Updates are applied one at a time as they arrive, not a round's replies at once.
    asynchronous: ClassVar[bool] = False

    def problems_for(self, num_clients: int) -> list[tuple[str, str]]:
        """Problems that depend on the number of clients (checked with the whole config)."""
        return []

    def planned_epochs(self, config: Any) -> int:
        """Local epochs a client trains over the whole run (DP-SGD calibrates σ to them)."""
        return int(config.rounds * config.train.local_epochs)


#: Every family: ``FAMILIES.get(name)`` is its strategy class (fedpriv.strategies.base).
FAMILIES = FamilyRegistry()
