"""Live Prometheus view of a run: the latest round record served at ``/metrics``.

The server publishes each round record as fedpriv writes it to ``metrics.jsonl``; a scrape
sees the latest round (gauges) and the run's traffic so far (counters). Each server keeps its
own ``CollectorRegistry``, so several can run in one process (tests, sweeps). Exported, named
as :mod:`fedpriv.telemetry.names` says:

- ``fedpriv_run_info{run}``: 1, naming the run (join on it rather than labelling everything)
- ``fedpriv_run_finished``: 0 while rounds go on, 1 once the last one is published
- ``fedpriv_round``, ``fedpriv_accuracy``, ``fedpriv_loss``, ``fedpriv_clients``
- ``fedpriv_round_seconds`` (record ``seconds``), ``fedpriv_elapsed_seconds`` (``elapsed``)
- ``fedpriv_epsilon`` (``privacy.epsilon_max``), ``fedpriv_user_level_epsilon``, under DP
- ``fedpriv_bytes_up_total``, ``fedpriv_bytes_down_total``: counters summed over rounds
- ``fedpriv_client_<metric>{partition}`` for every numeric client metric.

A run's last round must reach Prometheus before the process exits: :meth:`MetricsServer.finish`
keeps serving until a scrape has carried it (or a deadline passes), see docs/deployment.md.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fedpriv.errors import ConfigError
from fedpriv.telemetry.names import client_metric_name, client_values, is_number, partition_of
from fedpriv.telemetry.names import round_values as named_round_values

log = logging.getLogger("fedpriv")

_ROUND_GAUGES = {
    "round": "Number of the latest finished round (1-based).",
    "accuracy": "Global model accuracy on the held-out test split.",
    "loss": "Global model loss on the held-out test split.",
    "round_seconds": "Wall-clock seconds of the latest round.",
    "elapsed_seconds": "Seconds of training since round 1 began.",
    "epsilon": "Largest record-level epsilon any client has spent so far (privacy.epsilon_max).",
    "user_level_epsilon": "User-level epsilon of central DP spent so far.",
}


class _RoundCollector(Collector):
    """Turns the latest published record into metric families at each scrape, and counts
    which publication the latest completed scrape carried."""

    def __init__(self, run: str) -> None:
        self._run = run
        self._changed = threading.Condition()
        self._record: dict[str, Any] = {}
        self._bytes_up = self._bytes_down = 0
        self._finished = False
        self._version = 0  # publications so far: rounds, and the finish
        self._served = 0  # the latest publication a completed scrape carried

    @property
    def version(self) -> int:
        with self._changed:
            return self._version

    def publish(self, record: Mapping[str, Any]) -> None:
        with self._changed:
            # a copy down to the client entries: scrapes run on the server's threads
            self._record = {**record, "clients": [dict(c) for c in record.get("clients") or []]}
            self._bytes_up += _whole(record.get("bytes_up"))
            self._bytes_down += _whole(record.get("bytes_down"))
            self._version += 1

    def finish(self) -> None:
        with self._changed:
            self._finished = True
            self._version += 1

    def served(self, version: int) -> None:
        """A scrape that began at publication ``version`` has been written out."""
        with self._changed:
            self._served = max(self._served, version)
            self._changed.notify_all()

    def wait_served(self, timeout: float) -> bool:
        """Wait until a scrape has carried every publication, at most ``timeout`` s."""
        with self._changed:
            return self._changed.wait_for(lambda: self._served >= self._version, timeout)

    def collect(self) -> Iterator[Metric]:
        with self._changed:
            record, up, down = self._record, self._bytes_up, self._bytes_down
            finished = self._finished
        yield InfoMetricFamily("fedpriv_run", "The run these metrics describe.", {"run": self._run})
        yield GaugeMetricFamily(
            "fedpriv_run_finished", "1 once the run's last round is published.", int(finished)
        )
        for name, value in named_round_values(record).items():
            yield GaugeMetricFamily(f"fedpriv_{name}", _ROUND_GAUGES[name], value=float(value))
        clients = record.get("clients") or []
        yield GaugeMetricFamily("fedpriv_clients", "Client entries in the round.", len(clients))
        yield CounterMetricFamily("fedpriv_bytes_up", "Reply payload bytes, all rounds.", up)
        yield CounterMetricFamily("fedpriv_bytes_down", "Message payload bytes, all rounds.", down)
        yield from _client_families(clients)


def _whole(value: Any) -> int:
    return int(value) if is_number(value) else 0


def _client_families(clients: list[Mapping[str, Any]]) -> Iterator[Metric]:
    # One sample per (name, partition): a scrape with a duplicate sample is rejected whole,
    # so for a client listed twice (asynchronous rules) the later entry wins.
    samples: dict[str, dict[str, float]] = {}
    for client in clients:
        partition = partition_of(client)
        for key, value in client_values(client).items():
            samples.setdefault(client_metric_name(key), {})[partition] = float(value)
    for name, values in sorted(samples.items()):
        family = GaugeMetricFamily(name, "Client metric of the latest round.", labels=["partition"])
        for partition, value in values.items():
            family.add_metric([partition], value)
        yield family


class _Written:
    """A response body that calls ``done`` once its last block is on the socket: wsgiref
    writes (and flushes) each block before it asks for the next. ``len`` is the app's, so
    wsgiref still sends Content-Length."""

    def __init__(self, blocks: list[bytes], done: Callable[[], None]) -> None:
        self._blocks = blocks
        self._done = done

    def __len__(self) -> int:
        return len(self._blocks)

    def __iter__(self) -> Iterator[bytes]:
        yield from self._blocks
        self._done()


def _watch(app: WSGIApplication, collector: _RoundCollector) -> WSGIApplication:
    """``app``, telling ``collector`` which publication each finished scrape carried."""

    def watched(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        version = collector.version  # read first: the body holds at least this one
        body = list(app(environ, start_response))
        if environ.get("REQUEST_METHOD") != "GET" or environ.get("PATH_INFO") == "/favicon.ico":
            return body
        return _Written(body, lambda: collector.served(version))

    return watched


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class MetricsServer:
    """Serves a run's metrics as Prometheus text at ``http://host:port/metrics``.

    ``port=0`` picks a free port; ``.port`` is the one bound. ``host`` is loopback by
    default: the endpoint is plain, unauthenticated HTTP, so serving it to other machines
    (``0.0.0.0``) is the operator's choice, and logs a warning. Stop with :meth:`close` or
    use it as a context manager.
    """

    def __init__(self, *, port: int, host: str = "127.0.0.1", run: str = "") -> None:
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
        app = self._httpd.get_app()
        assert app is not None  # start_http_server made the server with its app
        self._httpd.set_app(_watch(app, self._collector))
        self.host = host
        self.port: int = self._httpd.server_port
        self._closed = False
        if not is_loopback(host):
            log.warning(
                "metrics served on %s:%d to other machines: plain HTTP, no authentication; "
                "allow port %d only from the Prometheus host (127.0.0.1 keeps it local)",
                host, self.port, self.port,
            )  # fmt: skip

    def publish(self, record: Mapping[str, Any]) -> None:
        """Show ``record`` (one ``metrics.jsonl`` round) from the next scrape on."""
        self._collector.publish(record)

    def finish(self, *, linger_seconds: float, give_up: Callable[[], bool] | None = None) -> bool:
        """Mark the run finished (``fedpriv_run_finished`` 1) and keep serving until a scrape
        has carried that and the last round, ``linger_seconds`` passed, or ``give_up()`` is
        true (checked a few times a second; Ctrl-C): a process that exits right after its
        last round would otherwise never show it to a Prometheus scraping every few
        seconds. True if a scrape carried it."""
        self._collector.finish()
        deadline = time.monotonic() + linger_seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._collector.wait_served(min(left, 0.25)):
                return True
            if give_up is not None and give_up():
                return False
        return False

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
