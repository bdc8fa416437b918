"""Strategy families behind one interface (:mod:`strategies.base`)."""

from fedpriv.registry import Registry
from strategies.base import Handler, RoundReport, RunContext, Strategy
from strategies.horizontal import Horizontal
from strategies.swarm import SwarmFamily
from strategies.vertical import Vertical

#: Families by name (``family=<name>``); every family registers here.
FAMILIES: Registry[Strategy] = Registry("family")
FAMILIES.register("horizontal")(Horizontal)
FAMILIES.register("vertical")(Vertical)
FAMILIES.register("swarm")(SwarmFamily)

__all__ = ["FAMILIES", "Handler", "RoundReport", "RunContext", "Strategy"]
