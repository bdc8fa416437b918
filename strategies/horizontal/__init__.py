"""Horizontal federated learning: FedAvg and its family."""

from strategies.horizontal.family import Horizontal, HorizontalClient
from strategies.horizontal.specs import HORIZONTAL_STRATEGIES, HorizontalSpec

__all__ = ["HORIZONTAL_STRATEGIES", "Horizontal", "HorizontalClient", "HorizontalSpec"]
