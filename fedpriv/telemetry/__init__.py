"""Device telemetry from edge clients and live exporters of a run's metrics.

Clients wrap training in :class:`DeviceMonitor` and send its metrics with their reply; the
server publishes each round record to Prometheus (:class:`MetricsServer`) and/or an InfluxDB
line-protocol file (:class:`InfluxFile`). ``deploy/grafana/fedpriv.json`` charts them.
"""

from fedpriv.telemetry.influx import InfluxFile, influx_lines
from fedpriv.telemetry.names import client_metric_name
from fedpriv.telemetry.probes import DeviceMonitor, device_snapshot
from fedpriv.telemetry.prometheus import MetricsServer
from fedpriv.telemetry.publish import RoundPublisher, run_label

__all__ = [
    "DeviceMonitor",
    "InfluxFile",
    "MetricsServer",
    "RoundPublisher",
    "client_metric_name",
    "device_snapshot",
    "influx_lines",
    "run_label",
]
