"""Where the server publishes each finished round besides ``metrics.jsonl``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedpriv.telemetry.influx import InfluxFile
from fedpriv.telemetry.prometheus import MetricsServer
from fedpriv.telemetry.settings import TelemetryConfig

log = logging.getLogger("fedpriv")

INFLUX_FILE = "metrics.influx"


def run_label(
    run_dir: str | os.PathLike[str], *, base: str | os.PathLike[str] | None = None
) -> str:
    """The name a run's metrics carry (Prometheus ``run``, InfluxDB tag ``run``): its results
    directory relative to ``base`` (default: the working directory, where Hydra's
    ``outputs/`` and ``multirun/`` are), else its absolute path. Unique, since one run at a
    time holds a directory, and the same when the run is resumed: jobs ``0`` and ``1`` of two
    sweeps are ``multirun/<date>/<time>/0`` and ``multirun/<date>/<other time>/0``."""
    path = Path(run_dir).absolute()
    root = Path.cwd() if base is None else Path(base).absolute()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


class RoundPublisher:
    """The Prometheus endpoint and the InfluxDB file a run's telemetry settings ask for."""

    def __init__(self, settings: TelemetryConfig, run_dir: Path) -> None:
        self.linger_seconds = settings.prometheus_linger_seconds
        self.server: MetricsServer | None = None
        self.influx: InfluxFile | None = None
        run = run_label(run_dir)
        if settings.prometheus_port is not None:
            self.server = MetricsServer(
                port=settings.prometheus_port, host=settings.prometheus_host, run=run
            )
            log.info("metrics at http://%s:%d/metrics", settings.prometheus_host, self.server.port)
        if settings.influx:
            self.influx = InfluxFile(run_dir / INFLUX_FILE, run=run)

    def publish(self, record: Mapping[str, Any]) -> None:
        if self.server is not None:
            self.server.publish(record)
        if self.influx is not None:
            self.influx.append(record)

    def close(self, *, give_up: Callable[[], bool] | None = None) -> None:
        """Mark the run finished, serve until Prometheus has scraped that (at most
        ``telemetry.prometheus_linger_seconds``, or until ``give_up()``), then free the port."""
        if self.server is None:
            return
        try:
            if self.linger_seconds > 0:
                log.info(
                    "serving the final round until Prometheus scrapes it, at most %g s "
                    "(telemetry.prometheus_linger_seconds; Ctrl-C stops waiting)",
                    self.linger_seconds,
                )
            scraped = self.server.finish(linger_seconds=self.linger_seconds, give_up=give_up)
            if not scraped and self.linger_seconds > 0 and not (give_up and give_up()):
                log.warning(
                    "no scrape of http://%s:%d/metrics in the %g s after the last round: "
                    "is Prometheus scraping it?",
                    self.server.host, self.server.port, self.linger_seconds,
                )  # fmt: skip
        finally:
            self.server.close()
