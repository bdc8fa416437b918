"""Strategy families behind one interface (:mod:`strategies.base`)."""

from fedpriv.registry import Registry
from strategies.base import Handler, RoundReport, RunContext, Strategy
from strategies.horizontal import Horizontal

#: Families by name (``family=<name>``); vertical and swarm register here too.
FAMILIES: Registry[Strategy] = Registry("family")
FAMILIES.register("horizontal")(Horizontal)

__all__ = ["FAMILIES", "Handler", "RoundReport", "RunContext", "Strategy"]
