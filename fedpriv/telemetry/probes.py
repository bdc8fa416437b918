"""What an edge client measures about its device while it trains.

Values go back with the client's reply as Flower ``MetricRecord`` entries (flat, str -> float,
hyphenated keys like ``train-seconds``), so the server sees which device is slow, short of
memory or hot. Every probe is cheap and optional: a probe the device lacks (no GPU, no thermal
sensors, no ``resource`` module) leaves its key out instead of raising. Memory is in MiB
(``-mb``), disk in GiB (``-gb``).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

_MIB = 2**20
_GIB = 2**30
_THERMAL_ROOT = Path("/sys/class/thermal")
_JETSON_RELEASE = Path("/etc/nv_tegra_release")
_JTOP_TIMEOUT_S = 2.0  # jtop waits for its service's first sample; never hold a round longer


#: Every measurement a device may report (each only where the device can read it).
TELEMETRY_KEYS = frozenset(
    {
        "rss-mb", "peak-rss-mb", "mem-free-mb", "disk-free-gb", "gpu-util-percent",
        "gpu-mem-mb", "soc-temp-c", "cpu-percent", "system-cpu-percent",
    }
)  # fmt: skip


def device_snapshot(*, disk_path: str = ".") -> dict[str, float]:
    """One sample of the device: memory, disk, and GPU and temperature where readable.

    Keys: ``rss-mb``, ``peak-rss-mb``, ``mem-free-mb``, ``disk-free-gb`` (of the file system
    holding ``disk_path``), and only where available ``gpu-util-percent``, ``gpu-mem-mb``,
    ``soc-temp-c``.
    """
    metrics = {
        "rss-mb": psutil.Process().memory_info().rss / _MIB,
        "mem-free-mb": psutil.virtual_memory().available / _MIB,
    }
    for probe in (_peak_rss, lambda: _disk_free(disk_path), _gpu, _soc_temperature):
        with contextlib.suppress(Exception):  # a probe must never fail the training it watches
            metrics.update(probe())
    if "peak-rss-mb" in metrics:  # the kernel updates its high-water mark lazily
        metrics["peak-rss-mb"] = max(metrics["peak-rss-mb"], metrics["rss-mb"])
    return metrics


class DeviceMonitor:
    """Measures the device over a block of work: ``with DeviceMonitor() as monitor: ...``.

    After the block, ``monitor.metrics()`` holds :func:`device_snapshot` taken at exit plus
    ``cpu-percent`` (this process's user+system CPU time over the block's wall time, x100;
    above 100 on several cores; children excluded) and ``system-cpu-percent`` (all CPUs,
    from ``psutil.cpu_percent``, whose reference point is process-wide: another caller in
    the same process during the block shortens the window it covers).
    """

    def __init__(self, *, disk_path: str = ".") -> None:
        self.disk_path = disk_path
        self._started: tuple[float, float] | None = None
        self._metrics: dict[str, float] | None = None

    def __enter__(self) -> DeviceMonitor:
        psutil.cpu_percent(None)
        self._started = (time.perf_counter(), _process_cpu_seconds())
        self._metrics = None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._started is not None, "__exit__ without __enter__"
        wall = time.perf_counter() - self._started[0]
        cpu = _process_cpu_seconds() - self._started[1]
        self._metrics = {
            "cpu-percent": 100.0 * cpu / wall if wall > 0 else 0.0,
            "system-cpu-percent": float(psutil.cpu_percent(None)),
            **device_snapshot(disk_path=self.disk_path),
        }

    def metrics(self) -> dict[str, float]:
        """The block's measurements (a copy); only valid once the ``with`` block has ended."""
        if self._metrics is None:
            raise RuntimeError(
                "DeviceMonitor.metrics() was called before its with-block ended; "
                "call it after `with DeviceMonitor() as monitor: ...`"
            )
        return dict(self._metrics)


def _process_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _peak_rss() -> dict[str, float]:
    import resource  # POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024  # macOS bytes, else KiB
    return {"peak-rss-mb": peak_bytes / _MIB}


def _disk_free(path: str) -> dict[str, float]:
    return {"disk-free-gb": psutil.disk_usage(path).free / _GIB}


def _gpu() -> dict[str, float]:
    """NVML where a driver answers, else jtop on a Jetson; {} when neither does."""
    return _nvml() or (_jtop() if _JETSON_RELEASE.exists() else {})


def _nvml() -> dict[str, float]:
    """Highest utilization and memory in use summed over every visible NVIDIA GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {}
    try:
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        if not handles:
            return {}
        return {
            "gpu-util-percent": float(
                max(pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles)
            ),
            "gpu-mem-mb": sum(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles) / _MIB,
        }
    except Exception:
        return {}
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _jtop() -> dict[str, float]:
    """GPU load and GPU-shared memory from the jetson-stats service, bounded in time."""
    found: dict[str, float] = {}

    def read() -> None:
        try:
            from jtop import jtop

            with jtop() as jetson:
                found["gpu-util-percent"] = float(jetson.stats["GPU"])
                found["gpu-mem-mb"] = float(jetson.memory["RAM"]["shared"]) / 1024  # kB
        except Exception:
            pass

    reader = threading.Thread(target=read, name="fedpriv-jtop", daemon=True)
    reader.start()
    reader.join(_JTOP_TIMEOUT_S)
    return dict(found)


def _soc_temperature() -> dict[str, float]:
    """Hottest sensor in °C: psutil's sensors, else the kernel's thermal zones."""
    sensors: dict[str, Any] = getattr(psutil, "sensors_temperatures", dict)()
    readings = [entry.current for entries in sensors.values() for entry in entries]
    if not readings:
        for zone in _THERMAL_ROOT.glob("thermal_zone*/temp"):
            try:
                readings.append(int(zone.read_text().strip()) / 1000)  # millidegrees
            except (OSError, ValueError):
                continue
    readings = [float(r) for r in readings if r is not None and math.isfinite(r)]
    return {"soc-temp-c": max(readings)} if readings else {}
