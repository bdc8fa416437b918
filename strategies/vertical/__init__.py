"""Vertical federated learning: split learning over privately aligned entities."""

from fedpriv.strategies.vertical.family import Vertical
from fedpriv.strategies.vertical.settings import VERTICAL_STRATEGIES, VerticalSettings

__all__ = ["VERTICAL_STRATEGIES", "Vertical", "VerticalSettings"]
