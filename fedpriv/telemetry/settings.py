"""``telemetry.*``: what clients report about their devices, where the server publishes it."""

from __future__ import annotations

import dataclasses

from fedpriv.registry import Spec


@dataclasses.dataclass(frozen=True)
class TelemetryConfig(Spec):
    """What clients report about their devices, and where the server publishes it."""

    #: Clients add CPU %, RSS, free memory, disk, GPU and temperature to each reply.
    device: bool = True
    #: Serve Prometheus text at http://<host>:<port>/metrics during a run; None: off.
    prometheus_port: int | None = None
    prometheus_host: str = "0.0.0.0"
    #: Also write ``metrics.influx`` (InfluxDB line protocol) into the results directory.
    influx: bool = False

    def problems(self) -> list[tuple[str, str]]:
        if self.prometheus_port is not None and not 0 <= self.prometheus_port <= 65535:
            return [("prometheus_port", "must be in 0..65535 (0: a free port) or null (off)")]
        return []
