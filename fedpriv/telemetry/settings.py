"""``telemetry.*``: what clients report about their devices, where the server publishes it."""

from __future__ import annotations

import dataclasses
import math

from fedpriv.registry import Spec


@dataclasses.dataclass(frozen=True)
class TelemetryConfig(Spec):
    """What clients report about their devices, and where the server publishes it."""

    #: Clients add CPU %, RSS, free memory, disk, GPU and temperature to each reply.
    device: bool = True
    #: Serve Prometheus text at http://<host>:<port>/metrics during a run; None: off.
    prometheus_port: int | None = None
    #: Loopback by default: the endpoint has no authentication. 0.0.0.0 (or an address)
    #: serves it to other machines, for a Prometheus elsewhere.
    prometheus_host: str = "127.0.0.1"
    #: After the last round, keep serving until a scrape has fetched it, at most this many
    #: seconds: two scrape intervals of Debian's default Prometheus config (15 s). The run
    #: waits only until the next scrape; 0: stop at once.
    prometheus_linger_seconds: float = 30.0
    #: Also write ``metrics.influx`` (InfluxDB line protocol) into the results directory.
    influx: bool = False

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.prometheus_port is not None and not 0 <= self.prometheus_port <= 65535:
            found.append(("prometheus_port", "must be in 0..65535 (0: a free port) or null (off)"))
        if not self.prometheus_host:
            found.append(("prometheus_host", "must name an address, e.g. 127.0.0.1 or 0.0.0.0"))
        linger = self.prometheus_linger_seconds
        if not (math.isfinite(linger) and linger >= 0):
            found.append(
                ("prometheus_linger_seconds", "must be >= 0 seconds (0: stop serving at once)")
            )
        return found
