"""fedpriv: privacy-preserving federated learning on Flower's engine.

>>> from fedpriv import load_config, run
>>> result = run(load_config(overrides=["strategy=fedavg", "rounds=5"]))  # doctest: +SKIP
>>> result.final["accuracy"]  # doctest: +SKIP

The names below are imported on first use: ``import fedpriv`` (and the ``fedpriv``
command's ``--help`` and ``--version``) does not pay for torch, Flower and Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedpriv._version import __version__

if TYPE_CHECKING:
    from fedpriv.api import resume, run
    from fedpriv.config import ExperimentConfig, from_mapping, load_config
    from fedpriv.errors import (
        ConfigError,
        DataError,
        FedprivError,
        RunFailed,
        RunInterrupted,
        SimulationError,
    )
    from fedpriv.results import Result

#: Public name -> the module that defines it.
_HOMES = {
    "resume": "fedpriv.api",
    "run": "fedpriv.api",
    "ExperimentConfig": "fedpriv.config",
    "from_mapping": "fedpriv.config",
    "load_config": "fedpriv.config",
    "ConfigError": "fedpriv.errors",
    "DataError": "fedpriv.errors",
    "FedprivError": "fedpriv.errors",
    "RunFailed": "fedpriv.errors",
    "RunInterrupted": "fedpriv.errors",
    "SimulationError": "fedpriv.errors",
    "Result": "fedpriv.results",
}

__all__ = [
    "ConfigError",
    "DataError",
    "ExperimentConfig",
    "FedprivError",
    "Result",
    "RunFailed",
    "RunInterrupted",
    "SimulationError",
    "__version__",
    "from_mapping",
    "load_config",
    "resume",
    "run",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'fedpriv' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
