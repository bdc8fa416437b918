"""A slow, lossy link between two network namespaces: added latency, random loss and a
rate limit, with the kernel's netem where it has one and equivalent parts where not.

Where ``sch_netem`` exists, each end of the link gets
``tc qdisc add dev X root netem delay D loss L rate R``: one direction each, so a
round trip pays the delay twice. Some kernels are built without netem (a Firecracker
guest's, say, with no modules to load). There the same three effects come from other
parts of the kernel and one small program:

- **rate**: ``tbf`` (token bucket filter) on each end, as a link's sender would queue;
- **loss**: an iptables rule in the router namespace dropping each forwarded packet
  with probability L (``-m statistic --mode random``), once per direction;
- **delay**: an iptables rule handing each forwarded packet to an NFQUEUE, where it waits
  in the kernel until :mod:`fedpriv.deployment.packet_delay` accepts it D later.

The substitutes act where the router forwards the packet (after the kernel has released
the sending socket's hold on it): a packet held on its sender's own output path would
still count against TCP's small-queue limit there and throttle the connection to a
couple of packets per delay, which netem avoids by releasing its packets the same way.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fedpriv.deployment.packet_delay import READY
from fedpriv.deployment.processes import FlowerProcess
from fedpriv.errors import ConfigError

#: The token bucket's burst: three full-size packets at line rate.
TBF_BURST = "32kbit"
#: How long a packet may wait in the token bucket's queue before it is dropped.
TBF_LATENCY = "300ms"


@dataclasses.dataclass(frozen=True)
class Impairment:
    """What a link does to every packet, each direction: ``delay_ms`` added latency,
    ``loss_percent`` dropped at random, ``rate_mbit`` the most it carries."""

    delay_ms: float = 100.0
    loss_percent: float = 1.0
    rate_mbit: float = 10.0

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.delay_ms <= 60_000:
            problems.append(f"delay_ms={self.delay_ms} must be in 0..60000")
        if not 0 <= self.loss_percent < 100:
            problems.append(f"loss_percent={self.loss_percent} must be in [0, 100)")
        if not 0 < self.rate_mbit <= 100_000:
            problems.append(f"rate_mbit={self.rate_mbit} must be in (0, 100000]")
        if problems:
            raise ConfigError("; ".join(problems))

    def netem_arguments(self) -> list[str]:
        return [
            "netem",
            "delay",
            f"{self.delay_ms:g}ms",
            "loss",
            f"{self.loss_percent:g}%",
            "rate",
            f"{self.rate_mbit:g}mbit",
        ]


def netns_exec(namespace: str, command: list[str]) -> list[str]:
    """``command`` run inside ``namespace`` (``ip netns exec`` executes it in place, so
    the process keeps the PID its starter sees)."""
    return ["ip", "netns", "exec", namespace, *command]


def run_in(
    namespace: str, command: list[str], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``namespace``; a clear error with its output when it fails."""
    done = subprocess.run(netns_exec(namespace, command), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(command)}` in network namespace {namespace} exited "
            f"{done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return done


def netem_available(namespace: str, device: str) -> bool:
    """Whether this kernel has netem: try it on ``device`` (a fresh link) and take it off."""
    added = run_in(namespace, ["tc", "qdisc", "add", "dev", device, "root", "netem"], check=False)
    if added.returncode != 0:
        return False
    run_in(namespace, ["tc", "qdisc", "del", "dev", device, "root"])
    return True


def substitute_problem() -> str | None:
    """Why the substitutes for netem cannot be set up here (a missing program); None if
    they can."""
    missing = [name for name in ("tc", "iptables") if shutil.which(name) is None]
    if missing:
        return (
            f"the kernel has no netem and {', '.join(missing)} is not installed "
            "(Debian: apt-get install iproute2 iptables)"
        )
    return None


@dataclasses.dataclass
class ImpairedLink:
    """One impaired link: how it was made (``mechanism``) and the delay program it needs
    (None under netem)."""

    mechanism: str
    delay: FlowerProcess | None = None

    def stop(self) -> None:
        if self.delay is not None:
            self.delay.stop()


def impair(
    impairment: Impairment,
    *,
    router: str,
    port: str,
    host: str,
    device: str,
    queue: int,
    netem: bool,
    log_path: Path,
) -> ImpairedLink:
    """Impair the link between ``router``'s ``port`` and ``host``'s ``device``, both
    directions; ``queue`` is the NFQUEUE number this link's delay uses (unique per
    router) where netem is missing."""
    if netem:
        for namespace, dev in ((router, port), (host, device)):
            run_in(
                namespace, ["tc", "qdisc", "add", "dev", dev, "root", *impairment.netem_arguments()]
            )
        return ImpairedLink("netem")
    if problem := substitute_problem():
        raise RuntimeError(problem)
    tbf = [
        "tbf",
        "rate",
        f"{impairment.rate_mbit:g}mbit",
        "burst",
        TBF_BURST,
        "latency",
        TBF_LATENCY,
    ]
    for namespace, dev in ((router, port), (host, device)):
        run_in(namespace, ["tc", "qdisc", "add", "dev", dev, "root", *tbf])
    probability = f"{impairment.loss_percent / 100:.6f}"
    drop = ["-m", "statistic", "--mode", "random", "--probability", probability, "-j", "DROP"]
    for side in ("-i", "-o"):
        rule = ["iptables", "-A", "FORWARD", side, port]
        if impairment.loss_percent > 0:
            run_in(router, [*rule, *drop])
        if impairment.delay_ms > 0:
            run_in(router, [*rule, "-j", "NFQUEUE", "--queue-num", str(queue)])
    link = ImpairedLink("tbf rate, iptables statistic loss, NFQUEUE delay")
    if impairment.delay_ms > 0:
        link.delay = start_packet_delay(router, queue, impairment.delay_ms, log_path)
    return link


def start_packet_delay(
    namespace: str, queue: int, delay_ms: float, log_path: Path
) -> FlowerProcess:
    """:mod:`fedpriv.deployment.packet_delay` for ``queue`` in ``namespace``, once it
    holds the queue (until then the queue drops every packet)."""
    command = [sys.executable, "-m", "fedpriv.deployment.packet_delay"]
    command += ["--queue", str(queue), "--delay-ms", f"{delay_ms:g}"]
    process = FlowerProcess(
        f"packet delay (queue {queue})", netns_exec(namespace, command), log_path
    )
    deadline = time.monotonic() + 30
    while READY not in log_path.read_text(errors="replace"):
        if not process.alive() or time.monotonic() > deadline:
            process.stop()
            raise RuntimeError(f"{process.name} did not start:\n{process.tail()}")
        time.sleep(0.05)
    return process
