"""A real Prometheus (Debian's package) scrapes a run on 127.0.0.1 and keeps its final round.

Prometheus runs as a child process with its own config and storage in tmp_path, scraping
the run's endpoint every second; the run is a small DP-SGD experiment on the in-process
engine. Everything is read back through Prometheus' HTTP API, as Grafana reads it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedpriv import run
from fedpriv.deployment.processes import free_port

ROOT = Path(__file__).parents[2]
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
ROUNDS = 3
#: How long waiting may take before the test gives up (a deadline, not an assertion).
DEADLINE_S = 90.0

pytestmark = [
    pytest.mark.processes,
    pytest.mark.inprocess,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="no prometheus binary (Debian: apt-get install prometheus; `make test` does)",
    ),
]


class Prometheus:
    """Prometheus' HTTP API on 127.0.0.1:``port``."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as reply:
            return json.loads(reply.read())

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector: ``[{"metric": labels, "value": [t, "v"]}]``."""
        answer = self.get("/api/v1/query", query=promql)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def wait_for(self, promql: str, wanted: int = 1) -> list[dict[str, Any]]:
        """Poll until ``promql`` returns ``wanted`` series (or the deadline passes)."""
        deadline = time.monotonic() + DEADLINE_S
        while len(found := self.query(promql)) < wanted:
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql!r} gave {found} after {DEADLINE_S} s")
            time.sleep(0.5)
        return found


def ready(prometheus: Prometheus, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for Prometheus' readiness endpoint, failing fast if the process died."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited {process.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"prometheus not ready after {DEADLINE_S} s: {log.read_text()}")


@pytest.fixture
def scraped_port(tmp_path) -> Iterator[tuple[int, Prometheus]]:
    """A port for the run's exporter, and a Prometheus scraping it every second."""
    exporter, web = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: fedpriv\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter}']}}]\n"
    )
    log = tmp_path / "prometheus.log"
    command = [str(PROMETHEUS), f"--config.file={config}", f"--web.listen-address=127.0.0.1:{web}",
               f"--storage.tsdb.path={tmp_path / 'tsdb'}"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        prometheus = Prometheus(web)
        ready(prometheus, process, log)
        yield exporter, prometheus
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_prometheus_keeps_the_final_round_of_a_run(
    scraped_port, make_config, tmp_path, monkeypatch
):
    exporter, prometheus = scraped_port
    monkeypatch.chdir(tmp_path)  # where a sweep's multirun/ folder is
    config = make_config(
        f"rounds={ROUNDS}", "num_clients=3", "privacy=dp_sgd", "telemetry.device=true",
        f"telemetry.prometheus_port={exporter}", "telemetry.prometheus_linger_seconds=60",
        "output_dir=multirun/2026-01-02/10-00-00/0",
    )  # fmt: skip
    result = run(config)
    assert len(result.history) == ROUNDS

    # The run's process has closed the endpoint: the series went stale, so read what
    # Prometheus kept over the last minutes, joined with the run's name.
    final = prometheus.wait_for(
        "last_over_time(fedpriv_round[10m]) * on(instance, job) group_left(run) "
        "last_over_time(fedpriv_run_info[10m])"
    )
    assert len(final) == 1
    assert float(final[0]["value"][1]) == ROUNDS
    assert final[0]["metric"]["run"] == "multirun/2026-01-02/10-00-00/0"
    finished = prometheus.query("max_over_time(fedpriv_run_finished[10m])")
    assert [float(series["value"][1]) for series in finished] == [1.0]

    epsilon = prometheus.query("last_over_time(fedpriv_epsilon[10m])")
    assert float(epsilon[0]["value"][1]) == pytest.approx(
        result.history[-1]["privacy"]["epsilon_max"], rel=1e-9
    )
    cpu = prometheus.wait_for("last_over_time(fedpriv_client_cpu_percent[10m])", wanted=3)
    assert sorted(series["metric"]["partition"] for series in cpu) == ["0", "1", "2"]
    assert not any("node_id" in series["metric"] for series in cpu)


@pytest.mark.skipif(PROMTOOL is None, reason="no promtool (Debian's prometheus package has it)")
def test_deploy_prometheus_config_passes_promtool():
    checked = subprocess.run(
        [PROMTOOL, "check", "config", "--syntax-only", str(ROOT / "deploy" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
