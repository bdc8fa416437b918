"""Device probes, the Prometheus exporter, line protocol and the Grafana dashboard."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedpriv import load_config
from fedpriv.errors import ConfigError
from fedpriv.telemetry import (
    DeviceMonitor,
    InfluxFile,
    MetricsServer,
    RoundPublisher,
    client_metric_name,
    device_snapshot,
    influx_lines,
    probes,
    run_label,
)
from fedpriv.telemetry.settings import TelemetryConfig

ROOT = Path(__file__).parents[2]
ALWAYS = {"cpu-percent", "system-cpu-percent", "rss-mb", "peak-rss-mb", "mem-free-mb"}
GPU_KEYS = {"gpu-util-percent", "gpu-mem-mb"}
RECORD = {
    "round": 3,
    "accuracy": 0.75,
    "loss": 0.5,
    "seconds": 2.5,
    "elapsed": 9.0,
    "bytes_up": 1000,
    "bytes_down": 4000,
    "privacy": {"epsilon_max": 1.0, "user_level_epsilon": 2.0, "epsilon_per_client": {"0": 1.0}},
    "clients": [
        {"node_id": 11, "partition-id": 0, "train-seconds": 1.25, "num-examples": 60},
        {"node_id": 12, "partition-id": 1, "cpu-percent": 180.0, "note": "text", "ok": True},
        {"node_id": 13, "party": 2, "rss-mb": 512.0, "ckks-error": math.nan},
    ],
}


# -- probes --------------------------------------------------------------------------------
@pytest.fixture
def no_gpu(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    monkeypatch.setattr(probes, "_JETSON_RELEASE", tmp_path / "not-a-jetson")


def test_monitor_reports_plausible_device_metrics(no_gpu):
    with DeviceMonitor() as monitor:
        pass
    metrics = monitor.metrics()
    assert ALWAYS | {"disk-free-gb"} <= metrics.keys()
    assert not metrics.keys() & GPU_KEYS  # this machine has no GPU
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert metrics["rss-mb"] > 0 and metrics["peak-rss-mb"] >= metrics["rss-mb"]
    assert metrics["mem-free-mb"] >= 0 and metrics["disk-free-gb"] >= 0
    assert metrics["cpu-percent"] >= 0 and 0 <= metrics["system-cpu-percent"] <= 100


def test_busy_block_uses_cpu():
    with DeviceMonitor() as monitor:
        start = time.process_time()
        while time.process_time() - start < 0.05:  # until the OS has counted CPU time
            sum(range(1000))
    assert monitor.metrics()["cpu-percent"] > 0


def test_metrics_before_the_block_ends_is_an_error():
    monitor = DeviceMonitor()
    with pytest.raises(RuntimeError, match="before its with-block ended"):
        monitor.metrics()


def test_unreadable_disk_path_drops_only_that_key(no_gpu):
    snapshot = device_snapshot(disk_path="/no/such/dir")
    assert "disk-free-gb" not in snapshot and {"rss-mb", "mem-free-mb"} <= snapshot.keys()


def fake_nvml(*, broken: str = "") -> types.ModuleType:
    module = types.ModuleType("pynvml")
    module.shutdowns = 0  # type: ignore[attr-defined]

    def call(name, result):
        def function(*args):
            if name == broken:
                raise RuntimeError(f"NVML {name} failed")
            return result(*args)

        return function

    def shutdown():
        module.shutdowns += 1  # type: ignore[attr-defined]

    module.nvmlInit = call("nvmlInit", lambda: None)  # type: ignore[attr-defined]
    module.nvmlShutdown = shutdown  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = call("count", lambda: 2)  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = call("handle", lambda i: i)  # type: ignore[attr-defined]
    module.nvmlDeviceGetUtilizationRates = call(  # type: ignore[attr-defined]
        "util", lambda h: types.SimpleNamespace(gpu=[30, 70][h])
    )
    module.nvmlDeviceGetMemoryInfo = call(  # type: ignore[attr-defined]
        "memory", lambda h: types.SimpleNamespace(used=[1, 3][h] * 2**20)
    )
    return module


def test_nvml_gpu_metrics_when_present(monkeypatch, no_gpu):
    nvml = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    snapshot = device_snapshot()
    assert (snapshot["gpu-util-percent"], snapshot["gpu-mem-mb"]) == (70.0, 4.0)
    assert nvml.shutdowns == 1


@pytest.mark.parametrize("broken", ["nvmlInit", "count", "util"])
def test_broken_nvml_gives_no_gpu_keys(monkeypatch, no_gpu, broken):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(broken=broken))
    assert not device_snapshot().keys() & GPU_KEYS


def test_jetson_gpu_metrics_from_jtop(monkeypatch, no_gpu, tmp_path):
    class FakeJtop:
        def __init__(self):
            self.stats = {"GPU": 12.0}
            self.memory = {"RAM": {"shared": 2048}}  # kB

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setitem(sys.modules, "jtop", types.SimpleNamespace(jtop=FakeJtop))
    (tmp_path / "nv_tegra_release").write_text("# R36\n")
    monkeypatch.setattr(probes, "_JETSON_RELEASE", tmp_path / "nv_tegra_release")
    snapshot = device_snapshot()
    assert (snapshot["gpu-util-percent"], snapshot["gpu-mem-mb"]) == (12.0, 2.0)


def test_soc_temperature_from_psutil_then_thermal_zones(monkeypatch, no_gpu, tmp_path):
    sensors = {"coretemp": [types.SimpleNamespace(current=41.0)], "soc": [
        types.SimpleNamespace(current=55.5)]}  # fmt: skip
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: sensors, raising=False)
    assert device_snapshot()["soc-temp-c"] == 55.5

    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {}, raising=False)
    monkeypatch.setattr(probes, "_THERMAL_ROOT", tmp_path)
    assert "soc-temp-c" not in device_snapshot()
    for zone, text in [("thermal_zone0", "48000\n"), ("thermal_zone1", "garbage")]:
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "temp").write_text(text)
    assert device_snapshot()["soc-temp-c"] == 48.0


# -- Prometheus ----------------------------------------------------------------------------
def scrape(server: MetricsServer) -> dict[str, list]:
    """Sample lists by sample name, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_metrics_server_serves_the_published_record():
    with MetricsServer(port=0, host="127.0.0.1", run="demo") as server:
        assert server.port > 0
        server.publish({**RECORD, "loss": None})
        server.publish(RECORD)
        samples = scrape(server)
    values = {name: found[0].value for name, found in samples.items() if len(found) == 1}
    assert values["fedpriv_run_info"] == 1 and samples["fedpriv_run_info"][0].labels == {
        "run": "demo"
    }
    expected = {"fedpriv_round": 3, "fedpriv_accuracy": 0.75, "fedpriv_loss": 0.5,
                "fedpriv_round_seconds": 2.5, "fedpriv_elapsed_seconds": 9.0,
                "fedpriv_epsilon": 1.0, "fedpriv_user_level_epsilon": 2.0,
                "fedpriv_clients": 3, "fedpriv_bytes_up_total": 2000,
                "fedpriv_bytes_down_total": 8000, "fedpriv_run_finished": 0}  # fmt: skip
    assert {name: values[name] for name in expected} == expected
    clients = {
        (name, s.labels["partition"]): s.value
        for name, found in samples.items()
        if name.startswith("fedpriv_client_")
        for s in found
    }
    # Labelled by partition alone: Flower's node IDs change every run, partitions do not.
    assert {tuple(s.labels) for n, f in samples.items() if "client_" in n for s in f} == {
        ("partition",)
    }
    assert clients == {
        ("fedpriv_client_train_seconds", "0"): 1.25,
        ("fedpriv_client_num_examples", "0"): 60,
        ("fedpriv_client_cpu_percent", "1"): 180.0,
        ("fedpriv_client_rss_mb", "2"): 512.0,  # "party" stands in for partition-id
    }


def test_no_epsilon_series_before_any_client_accounted_for_it():
    with MetricsServer(port=0, host="127.0.0.1") as server:
        server.publish({**RECORD, "privacy": {"epsilon_max": None}})
        assert not {"fedpriv_epsilon", "fedpriv_user_level_epsilon"} & scrape(server).keys()


class Scraper(threading.Thread):
    """Scrapes a server over and over, as Prometheus does, keeping what each scrape saw."""

    def __init__(self, server: MetricsServer) -> None:
        super().__init__(daemon=True)
        self.server, self.seen, self.stop = server, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            samples = scrape(self.server)
            self.seen.append({name: found[0].value for name, found in samples.items()})
            self.stop.wait(0.05)


def test_finish_serves_until_a_scrape_carries_the_last_round():
    with MetricsServer(port=0, host="127.0.0.1") as server:
        server.publish(RECORD)
        scraper = Scraper(server)
        scraper.start()
        try:
            # the deadline only bounds a broken wait; a scrape ends it
            assert server.finish(linger_seconds=120) is True
        finally:
            scraper.stop.set()
            scraper.join()
    final = [seen for seen in scraper.seen if seen["fedpriv_run_finished"] == 1]
    assert final and final[0]["fedpriv_round"] == 3


def test_finish_gives_up_when_nobody_scrapes_after_the_last_round():
    with MetricsServer(port=0, host="127.0.0.1") as server:
        server.publish(RECORD)
        scrape(server)  # before the finish: does not count
        assert server.finish(linger_seconds=0.2) is False
        assert server.finish(linger_seconds=0) is False  # 0: no wait at all
        assert scrape(server)["fedpriv_run_finished"][0].value == 1


def test_finish_stops_waiting_when_told_to_give_up():
    asked = []

    def give_up() -> bool:  # Ctrl-C, as the run passes it
        asked.append(True)
        return True

    with MetricsServer(port=0, host="127.0.0.1") as server:
        server.publish(RECORD)
        assert server.finish(linger_seconds=120, give_up=give_up) is False
    assert asked == [True]  # asked once, and it ended the wait


def test_serving_other_machines_is_loud(caplog):
    with caplog.at_level(logging.WARNING, logger="fedpriv"):
        with MetricsServer(port=0, host="127.0.0.1"):
            pass
        assert not caplog.records
        with MetricsServer(port=0, host="0.0.0.0") as server:
            pass
    assert f"0.0.0.0:{server.port} to other machines" in caplog.text
    assert "no authentication" in caplog.text


def test_close_frees_the_port():
    server = MetricsServer(port=0, host="127.0.0.1")
    port = server.port
    scrape(server)
    server.close()
    server.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    with MetricsServer(port=port, host="127.0.0.1") as again:
        assert again.port == port


def test_metrics_server_rejects_bad_and_busy_ports():
    with pytest.raises(ConfigError, match=re.escape("port=70000 must be in 0..65535")):
        MetricsServer(port=70000)
    with (
        MetricsServer(port=0, host="127.0.0.1") as server,
        pytest.raises(OSError, match=f"127.0.0.1:{server.port}"),
    ):
        MetricsServer(port=server.port, host="127.0.0.1")


# -- a run's publisher -----------------------------------------------------------------------
def test_run_label_keeps_sweeps_and_runs_apart(tmp_path):
    jobs = [tmp_path / "multirun" / "2026-01-02" / stamp / "0" for stamp in ("10-00-00-1", "11-00")]
    labels = [run_label(job, base=tmp_path) for job in jobs]
    assert labels == ["multirun/2026-01-02/10-00-00-1/0", "multirun/2026-01-02/11-00/0"]
    assert run_label(tmp_path / "elsewhere", base=tmp_path / "root") == str(tmp_path / "elsewhere")


def test_run_label_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_label("outputs/2026-01-02/10-00-00") == "outputs/2026-01-02/10-00-00"
    assert run_label(tmp_path / "outputs" / "x") == "outputs/x"


def test_publisher_serves_the_run_label_and_finishes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = TelemetryConfig(prometheus_port=0, prometheus_linger_seconds=0, influx=True)
    publisher = RoundPublisher(settings, tmp_path / "multirun" / "d" / "t" / "1")
    assert publisher.server is not None and publisher.server.host == "127.0.0.1"
    try:
        publisher.publish(RECORD)
        samples = scrape(publisher.server)
    finally:
        publisher.close()
    assert samples["fedpriv_run_info"][0].labels == {"run": "multirun/d/t/1"}
    lines = (tmp_path / "multirun" / "d" / "t" / "1" / "metrics.influx").read_text().splitlines()
    assert parse_line(lines[0])[1] == {"run": "multirun/d/t/1"}
    with pytest.raises(urllib.error.URLError):  # closed: the port is free again
        urllib.request.urlopen(f"http://127.0.0.1:{publisher.server.port}/metrics", timeout=5)


def test_telemetry_settings_defaults_and_bad_values():
    settings = load_config().telemetry
    assert (settings.prometheus_host, settings.prometheus_linger_seconds) == ("127.0.0.1", 30)
    with pytest.raises(ConfigError) as error:
        load_config(overrides=["telemetry.prometheus_linger_seconds=-1",
                               "telemetry.prometheus_port=70000"])  # fmt: skip
    message = str(error.value)
    assert "telemetry.prometheus_linger_seconds=-1.0 must be >= 0 seconds" in message
    assert "telemetry.prometheus_port=70000 must be in 0..65535" in message


# -- InfluxDB line protocol ----------------------------------------------------------------
def unescape(text: str) -> str:
    return re.sub(r"\\([, =])", r"\1", text)


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, float | int], int]:
    """An independent reader of numeric-only line protocol."""
    head, fields, stamp = re.split(r"(?<!\\) ", line)
    measurement, *tags = re.split(r"(?<!\\),", head)
    tag_map = dict(map(unescape, re.split(r"(?<!\\)=", tag)) for tag in tags)
    field_map: dict[str, float | int] = {}
    for field in re.split(r"(?<!\\),", fields):
        key, value = re.split(r"(?<!\\)=", field)
        field_map[unescape(key)] = int(value[:-1]) if value.endswith("i") else float(value)
    return unescape(measurement), tag_map, field_map, int(stamp)


def test_influx_lines_exact_for_a_simple_record():
    record = {"round": 1, "accuracy": 0.5, "loss": None, "seconds": 1.5, "bytes_up": 10,
              "bytes_down": 20, "privacy": {"epsilon_max": 0.75},
              "clients": [{"node_id": 7, "partition-id": 2, "train-seconds": 0.25}]}  # fmt: skip
    # No hyphen in any name (no query needs quotes), no random node ID among the tags.
    assert influx_lines(record, run="r1", time_ns=123) == [
        "fedpriv_round,run=r1 round=1i,accuracy=0.5,round_seconds=1.5,epsilon=0.75,"
        "bytes_up=10i,bytes_down=20i,clients=1i 123",
        "fedpriv_client,partition=2,run=r1 round=1i,train_seconds=0.25 123",
    ]


def test_influx_field_names_are_the_prometheus_names():
    with MetricsServer(port=0, host="127.0.0.1") as server:
        server.publish(RECORD)
        served = set(scrape(server))
    fields = {key for line in influx_lines(RECORD, run="r", time_ns=1)
              for key in parse_line(line)[2]}  # fmt: skip
    assert fields <= {"round", "bytes_up", "bytes_down", "clients"} | {
        name.removeprefix("fedpriv_client_").removeprefix("fedpriv_") for name in served
    }
    assert all(re.fullmatch(r"[a-z0-9_]+", field) for field in fields), fields


def test_influx_lines_round_trip_awkward_names_and_skip_missing_values():
    skipped = {"none": None, "nan": math.nan, "inf": math.inf, "flag": True, "text": "x"}
    awkward = {"node_id": 5, "partition-id": "4 b,c=d", "odd key,=x": 2, "ratio": 1e-5,
               **skipped}  # fmt: skip
    record = {**RECORD, "loss": math.nan, "clients": [awkward]}
    lines = influx_lines(record, run="exp 1,a=b", time_ns=42)
    parsed = [parse_line(line) for line in lines]
    assert parsed == [
        ("fedpriv_round", {"run": "exp 1,a=b"}, {"round": 3, "accuracy": 0.75,
         "round_seconds": 2.5, "elapsed_seconds": 9.0, "epsilon": 1.0,
         "user_level_epsilon": 2.0, "bytes_up": 1000, "bytes_down": 4000, "clients": 1}, 42),
        ("fedpriv_client", {"run": "exp 1,a=b", "partition": "4 b,c=d"},
         {"round": 3, "odd_key__x": 2, "ratio": 1e-5}, 42),
    ]  # fmt: skip
    assert all(type(v) is int for v in parsed[1][2].values() if v != 1e-5)  # "i" suffix kept


def test_influx_rejects_what_line_protocol_cannot_carry():
    with pytest.raises(ConfigError, match="run=''"):
        influx_lines(RECORD, run="")
    with pytest.raises(ValueError, match="line break"):
        influx_lines(RECORD, run="two\nlines")


def test_influx_file_appends_whole_rounds(tmp_path):
    target = InfluxFile(tmp_path / "out" / "metrics.lp", run="r")
    target.append(RECORD, time_ns=1)
    target.append({**RECORD, "round": 4}, time_ns=2)
    lines = (tmp_path / "out" / "metrics.lp").read_text().splitlines()
    assert len(lines) == 2 * (1 + len(RECORD["clients"]))
    assert [parse_line(line)[2]["round"] for line in lines] == [3, 3, 3, 3, 4, 4, 4, 4]


# -- Grafana -------------------------------------------------------------------------------
def test_dashboard_queries_only_metrics_the_exporter_serves():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "fedpriv.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    # A datasource variable, not an import-time input: works imported and provisioned.
    assert variables["datasource"]["type"] == "datasource" and "__inputs" not in dashboard
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in panels)
    queries = [t["expr"] for p in panels for t in p["targets"]]
    queries += [v.get("definition", "") for v in dashboard["templating"]["list"]]
    used = {name for query in queries for name in re.findall(r"\bfedpriv_\w+", query)}

    with DeviceMonitor() as monitor:
        pass
    keys = [*monitor.metrics(), *GPU_KEYS, "soc-temp-c", "train-seconds", "ckks-encrypt-seconds",
            "epsilon"]  # fmt: skip
    client = {"node_id": 1, "partition-id": 0, **dict.fromkeys(keys, 1.0)}
    with MetricsServer(port=0, host="127.0.0.1") as server:
        server.publish({**RECORD, "clients": [client]})
        served = set(scrape(server))
    assert used <= served, f"dashboard queries unknown metrics: {sorted(used - served)}"
    wanted = ["cpu-percent", "rss-mb", "peak-rss-mb", "mem-free-mb", "soc-temp-c",
              "gpu-util-percent", "train-seconds", "ckks-encrypt-seconds", "epsilon"]  # fmt: skip
    assert {client_metric_name(k) for k in wanted} <= used
    assert {"fedpriv_epsilon", "fedpriv_user_level_epsilon", "fedpriv_run_finished"} <= used
