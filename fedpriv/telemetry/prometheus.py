"""Live Prometheus view of a run: the latest round record served at ``/metrics``.

The server publishes each round record as fedpriv writes it to ``metrics.jsonl``; a scrape
sees the latest round (gauges) and the run's traffic so far (counters). Each server keeps its
own ``CollectorRegistry``, so several can run in one process (tests, sweeps). Exported:

- ``fedpriv_run_info{run}``: 1, naming the run (join on it rather than labelling everything)
- ``fedpriv_round``, ``fedpriv_accuracy``, ``fedpriv_loss``, ``fedpriv_clients``
- ``fedpriv_round_seconds`` (record ``seconds``), ``fedpriv_elapsed_seconds`` (``elapsed``)
- ``fedpriv_bytes_up_total``, ``fedpriv_bytes_down_total``: counters summed over rounds
- ``fedpriv_client_<metric>{node_id, partition}`` for every numeric client metric, named by
  :func:`client_metric_name`; ``partition`` is ``partition-id``, else ``party``, else "".
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator, Mapping
from numbers import Real
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fedpriv.errors import ConfigError

LABEL_KEYS = ("node_id", "partition-id", "party")  # client entries' identities, not metrics
_ROUND_GAUGES = {
    "round": ("fedpriv_round", "Number of the latest finished round (1-based)."),
    "accuracy": ("fedpriv_accuracy", "Global model accuracy on the held-out test split."),
    "loss": ("fedpriv_loss", "Global model loss on the held-out test split."),
    "seconds": ("fedpriv_round_seconds", "Wall-clock seconds of the latest round."),
    "elapsed": ("fedpriv_elapsed_seconds", "Seconds of training since round 1 began."),
}


def client_metric_name(key: str) -> str:
    """Prometheus name of a client metric: ``train-seconds`` -> ``fedpriv_client_train_seconds``."""
    return "fedpriv_client_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


def is_number(value: Any) -> bool:
    """True for finite real numbers; bools, None, NaN and strings are not metric values."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def client_labels(client: Mapping[str, Any]) -> tuple[str, str]:
    """``(node_id, partition)`` of one client entry, "" for what the entry lacks."""
    node = client.get("node_id")
    partition = client.get("partition-id", client.get("party"))
    return ("" if node is None else str(node), "" if partition is None else str(partition))


class _RoundCollector(Collector):
    """Turns the latest published record into metric families at each scrape."""

    def __init__(self, run: str) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._record: dict[str, Any] = {}
        self._bytes_up = self._bytes_down = 0

    def publish(self, record: Mapping[str, Any]) -> None:
        with self._lock:
            # a copy down to the client entries: scrapes run on the server's thread
            self._record = {**record, "clients": [dict(c) for c in record.get("clients") or []]}
            self._bytes_up += _whole(record.get("bytes_up"))
            self._bytes_down += _whole(record.get("bytes_down"))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            record, up, down = self._record, self._bytes_up, self._bytes_down
        yield InfoMetricFamily("fedpriv_run", "The run these metrics describe.", {"run": self._run})
        for key, (name, documentation) in _ROUND_GAUGES.items():
            if is_number(record.get(key)):
                yield GaugeMetricFamily(name, documentation, value=float(record[key]))
        clients = record.get("clients") or []
        yield GaugeMetricFamily("fedpriv_clients", "Client entries in the round.", len(clients))
        yield CounterMetricFamily("fedpriv_bytes_up", "Reply payload bytes, all rounds.", up)
        yield CounterMetricFamily("fedpriv_bytes_down", "Message payload bytes, all rounds.", down)
        yield from _client_families(clients)


def _whole(value: Any) -> int:
    return int(value) if is_number(value) else 0


def _client_families(clients: list[Mapping[str, Any]]) -> Iterator[Metric]:
    # One sample per (name, labels): "a-b" and "a_b" share a name, and a scrape with a
    # duplicate sample is rejected whole, so the later value wins.
    samples: dict[str, dict[tuple[str, str], float]] = {}
    for client in clients:
        labels = client_labels(client)
        for key, value in client.items():
            if key not in LABEL_KEYS and is_number(value):
                samples.setdefault(client_metric_name(key), {})[labels] = float(value)
    for name, values in sorted(samples.items()):
        family = GaugeMetricFamily(
            name, "Client metric of the latest round.", labels=["node_id", "partition"]
        )
        for labels, value in values.items():
            family.add_metric(list(labels), value)
        yield family


class MetricsServer:
    """Serves a run's metrics as Prometheus text at ``http://host:port/metrics``.

    ``port=0`` picks a free port; ``.port`` is the one bound. Stop with :meth:`close` or use
    it as a context manager.
    """

    def __init__(self, *, port: int, host: str = "0.0.0.0", run: str = "") -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"port={port} must be in 0..65535 (0 picks a free port)")
        self.registry = CollectorRegistry()
        self._collector = _RoundCollector(run)
        self.registry.register(self._collector)
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise OSError(
                err.errno,
                f"cannot serve metrics on {host}:{port}: {err.strerror}; "
                "choose another port, or 0 for a free one",
            ) from err
        self.host = host
        self.port: int = self._httpd.server_port
        self._closed = False

    def publish(self, record: Mapping[str, Any]) -> None:
        """Show ``record`` (one ``metrics.jsonl`` round) from the next scrape on."""
        self._collector.publish(record)

    def close(self) -> None:
        """Stop serving and free the port; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
