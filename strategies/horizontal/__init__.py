"""Horizontal federated learning: FedAvg and its family."""

from fedpriv.strategies.horizontal.async_family import AsyncHorizontal
from fedpriv.strategies.horizontal.client import HorizontalClient
from fedpriv.strategies.horizontal.family import Horizontal
from fedpriv.strategies.horizontal.specs import HORIZONTAL_STRATEGIES, HorizontalSpec

__all__ = [
    "HORIZONTAL_STRATEGIES",
    "AsyncHorizontal",
    "Horizontal",
    "HorizontalClient",
    "HorizontalSpec",
]
