"""Strategy families behind one interface (:mod:`strategies.base`)."""

from fedpriv.registry import Registry
from fedpriv.strategies.base import Handler, RoundReport, RunContext, Strategy
from fedpriv.strategies.horizontal import Horizontal
from fedpriv.strategies.swarm import SwarmFamily
from fedpriv.strategies.vertical import Vertical

#: Families by name (``family=<name>``); every family registers here.
FAMILIES: Registry[Strategy] = Registry("family")
FAMILIES.register("horizontal")(Horizontal)
FAMILIES.register("vertical")(Vertical)
FAMILIES.register("swarm")(SwarmFamily)

__all__ = ["FAMILIES", "Handler", "RoundReport", "RunContext", "Strategy"]
