"""Experiment trackers (``logger=<name>``): each finished round's scalars, and the run's
config once, in TensorBoard, MLflow, Weights & Biases (offline) or a CSV file.

They are fed the same per-round record as ``metrics.jsonl`` (docs/trackers.md). The
libraries are optional (``pip install 'fedpriv[trackers]'``) and imported only by a run
that chose one; ``none`` (the default) and ``csv`` need nothing.
"""

from fedpriv.trackers.base import (
    EXTRA,
    LOGGERS,
    STATUSES,
    LoggerSpec,
    NoLogger,
    TrackedRun,
    Tracker,
    flat_params,
)
from fedpriv.trackers.csv_file import CSV_FILE, CsvLogger
from fedpriv.trackers.mlflow_runs import MLFLOW_DB, MlflowLogger
from fedpriv.trackers.session import RunTracker, round_scalars
from fedpriv.trackers.tensorboard_events import TENSORBOARD_DIR, TensorBoardLogger
from fedpriv.trackers.wandb_offline import WANDB_DIR, WandbLogger

#: What each tracker writes into the results directory (by default).
TRACKER_FILES = (CSV_FILE, TENSORBOARD_DIR, MLFLOW_DB, WANDB_DIR)

__all__ = [
    "CSV_FILE",
    "EXTRA",
    "LOGGERS",
    "MLFLOW_DB",
    "STATUSES",
    "TENSORBOARD_DIR",
    "TRACKER_FILES",
    "WANDB_DIR",
    "CsvLogger",
    "LoggerSpec",
    "MlflowLogger",
    "NoLogger",
    "RunTracker",
    "TensorBoardLogger",
    "TrackedRun",
    "Tracker",
    "WandbLogger",
    "flat_params",
    "round_scalars",
]
