"""fedpriv: privacy-preserving federated learning on Flower's engine.

>>> from fedpriv import load_config, run
>>> result = run(load_config(overrides=["strategy=fedavg", "rounds=5"]))  # doctest: +SKIP
>>> result.final["accuracy"]  # doctest: +SKIP
"""

from fedpriv._version import __version__
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
