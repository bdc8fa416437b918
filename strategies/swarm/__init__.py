"""Swarm learning: decentralized training with the server as a relay only."""

from fedpriv.strategies.swarm.family import SwarmFamily
from fedpriv.strategies.swarm.settings import SWARM_STRATEGIES, SwarmSettings

__all__ = ["SWARM_STRATEGIES", "SwarmFamily", "SwarmSettings"]
