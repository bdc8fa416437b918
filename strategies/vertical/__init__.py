"""Vertical federated learning: split learning over privately aligned entities."""

from strategies.vertical.family import Vertical
from strategies.vertical.settings import VERTICAL_STRATEGIES, VerticalSettings

__all__ = ["VERTICAL_STRATEGIES", "Vertical", "VerticalSettings"]
