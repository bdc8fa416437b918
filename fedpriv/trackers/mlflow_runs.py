"""``logger=mlflow``: a run in an MLflow tracking store, through ``MlflowClient``.

By default the store is ``sqlite:///<results dir>/mlflow.db``: MLflow 3 keeps its
``./mlruns`` file store in maintenance mode and refuses it unless
``MLFLOW_ALLOW_FILE_STORE=true``, and SQLite needs no server. ``logger.tracking_uri`` (or
``MLFLOW_TRACKING_URI``) points every run of a sweep at one store, or at a server. The
client is used directly, not ``mlflow.start_run``: nothing global, so runs in one process
(a sweep's jobs, a notebook that uses MLflow itself) stay apart.

The run is named after its results directory and tagged with the fedpriv version, the
directory and its group (a sweep's directory); the config is logged as params, each
round's scalars as metrics at step = round. The run ends FINISHED (completed or stopped),
FAILED, or KILLED (interrupted). A resumed run continues the MLflow run tagged with its
directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from fedpriv.errors import ConfigError
from fedpriv.trackers.base import LOGGERS, LoggerSpec, TrackedRun, Tracker

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("fedpriv")

#: The default store, in the results directory.
MLFLOW_DB = "mlflow.db"
#: MLflow's run status for each way a run ends.
RUN_STATUS = {
    "completed": "FINISHED",
    "stopped": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
}
#: Params per ``log_batch`` call (MLflow's limit).
PARAMS_PER_BATCH = 100


@LOGGERS.register("mlflow")
@dataclasses.dataclass(frozen=True)
class MlflowLogger(LoggerSpec):
    """A run in an MLflow tracking store (``fedpriv[trackers]``)."""

    modules = ("mlflow",)

    #: Where runs go; None: ``MLFLOW_TRACKING_URI`` if set, else
    #: ``sqlite:///<results dir>/mlflow.db``.
    tracking_uri: str | None = None
    #: The MLflow experiment (made when missing).
    experiment: str = "fedpriv"
    #: The MLflow run's name; None: ``<parent>/<results dir>``.
    run_name: str | None = None

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.tracking_uri is not None and not self.tracking_uri.strip():
            rule = "must be a tracking URI (sqlite:///runs.db, http://host:5000) or null"
            out.append(("tracking_uri", rule))
        if not self.experiment.strip():
            out.append(("experiment", "must be a non-empty experiment name"))
        if self.run_name is not None and not self.run_name.strip():
            out.append(("run_name", "must be a non-empty name or null (the results directory's)"))
        return out

    def required_modules(self) -> tuple[str, ...]:
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        # MLflow's SQL store: mlflow-skinny leaves out what it needs.
        sql = uri is None or not uri.startswith(("file:", "http:", "https:", "databricks"))
        return (*self.modules, *(("sqlalchemy", "alembic") if sql else ()))

    def uri(self, run: TrackedRun) -> str:
        """The tracking URI this run logs to."""
        return (
            self.tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(run.directory / MLFLOW_DB).resolve()}"
        )

    def open(self, run: TrackedRun) -> Tracker:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = self.uri(run)
        with _quiet_store():
            client = MlflowClient(tracking_uri=uri)
            experiment_id = self._experiment_id(client)
            run_id = self._previous_run(client, experiment_id, run) if run.resuming else None
            if run_id is not None:
                client.update_run(run_id, status="RUNNING")
            else:
                run_id = client.create_run(
                    experiment_id, tags=run.tags, run_name=self.run_name or run.name
                ).info.run_id
                params = [Param(key, str(value)) for key, value in run.params().items()]
                for start in range(0, len(params), PARAMS_PER_BATCH):
                    batch = params[start : start + PARAMS_PER_BATCH]
                    client.log_batch(run_id, params=batch, synchronous=True)
        log.info("logger=mlflow: run %s in experiment %r at %s", run_id, self.experiment, uri)
        return MlflowTracker(client, run_id)

    def _experiment_id(self, client: MlflowClient) -> str:
        from mlflow.exceptions import MlflowException

        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                return client.create_experiment(self.experiment)
            except MlflowException:  # a parallel job of the sweep made it first
                experiment = client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise ConfigError(
                f"logger.experiment={self.experiment!r} is a deleted MLflow experiment; "
                "restore it (mlflow experiments restore) or choose another name"
            )
        return str(experiment.experiment_id)

    @staticmethod
    def _previous_run(client: MlflowClient, experiment_id: str, run: TrackedRun) -> str | None:
        """The MLflow run of the interrupted run being resumed (None: it made none)."""
        directory = run.tags["fedpriv.run_dir"]
        quote = "'" if "'" not in directory else '"'
        if quote in directory:
            log.warning("logger=mlflow: %s has both quotes; resuming in a new run", directory)
            return None
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`fedpriv.run_dir` = {quote}{directory}{quote}",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return found[0].info.run_id if found else None


class MlflowTracker(Tracker):
    """Logs each round as one synchronous ``log_batch``."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_round(self, step: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=RUN_STATUS[status])


@contextlib.contextmanager
def _quiet_store() -> Iterator[None]:
    """MLflow's and Alembic's notes on making a store's tables, and SQLAlchemy's
    deprecation warnings about MLflow's mappings, kept out of the run's log."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
