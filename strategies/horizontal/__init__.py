"""Horizontal federated learning: FedAvg and its family."""

from fedpriv.strategies.horizontal.family import Horizontal, HorizontalClient
from fedpriv.strategies.horizontal.specs import HORIZONTAL_STRATEGIES, HorizontalSpec

__all__ = ["HORIZONTAL_STRATEGIES", "Horizontal", "HorizontalClient", "HorizontalSpec"]
