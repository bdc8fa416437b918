"""Where the server publishes each finished round besides ``metrics.jsonl``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedpriv.telemetry.influx import InfluxFile
from fedpriv.telemetry.prometheus import MetricsServer
from fedpriv.telemetry.settings import TelemetryConfig

log = logging.getLogger("fedpriv")

INFLUX_FILE = "metrics.influx"


class RoundPublisher:
    """The Prometheus endpoint and the InfluxDB file a run's telemetry settings ask for."""

    def __init__(self, settings: TelemetryConfig, run_dir: Path) -> None:
        self.server: MetricsServer | None = None
        self.influx: InfluxFile | None = None
        if settings.prometheus_port is not None:
            self.server = MetricsServer(
                port=settings.prometheus_port, host=settings.prometheus_host, run=run_dir.name
            )
            log.info("metrics at http://%s:%d/metrics", settings.prometheus_host, self.server.port)
        if settings.influx:
            self.influx = InfluxFile(run_dir / INFLUX_FILE, run=run_dir.name)

    def publish(self, record: Mapping[str, Any]) -> None:
        if self.server is not None:
            self.server.publish(record)
        if self.influx is not None:
            self.influx.append(record)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
