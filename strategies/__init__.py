"""Strategy families behind one interface (:mod:`fedpriv.strategies.base`).

Each family is installed as a ``fedpriv.families`` entry point (pyproject.toml) and
found through :data:`fedpriv.families.FAMILIES`.
"""

from fedpriv.strategies.base import Handler, RoundReport, RunContext, Strategy

__all__ = ["Handler", "RoundReport", "RunContext", "Strategy"]
