"""Swarm learning: decentralized training with the server as a relay only."""

from fedpriv.strategies.swarm.family import SwarmFamily
from fedpriv.strategies.swarm.settings import (
    SWARM_STRATEGIES,
    DiNNO,
    Gossip,
    Leader,
    SwarmSettings,
    SwarmStrategy,
)

__all__ = [
    "SWARM_STRATEGIES",
    "DiNNO",
    "Gossip",
    "Leader",
    "SwarmFamily",
    "SwarmSettings",
    "SwarmStrategy",
]
