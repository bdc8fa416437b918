"""Hosts on an emulated network, on one Linux machine: each host a network namespace,
all of them joined through a router namespace by veth pairs, each host's link impaired
as configured (:mod:`fedpriv.deployment.impairment`).

::

    host "server" 10.77.0.2 ── 10.77.0.1 ┐
    host "device-0" 10.77.1.2 ── 10.77.1.1 ├ router (forwards; impairs the links)
    host "device-1" 10.77.2.2 ── 10.77.2.1 ┘

Each host has its own subnet, loopback and default route through the router, so a
process in it sees a machine of its own with one network interface (``eth0``). Nothing
is added to the machine's own namespace: every name is under a prefix unique to the
:class:`Network`, and :meth:`Network.close` ends every process left in its namespaces
(by PID) and deletes them, which deletes their links. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from fedpriv.deployment.impairment import (
    ImpairedLink,
    Impairment,
    impair,
    netem_available,
    netns_exec,
    run_in,
    substitute_problem,
)

#: The host's interface toward the router.
DEVICE = "eth0"
#: Each host's /24 is 10.77.<index>.0: the router .1, the host .2.
SUBNET = "10.77"


def network_problem() -> str | None:
    """Why a :class:`Network` with impaired links cannot be made here (not root, no
    iproute2, neither netem nor its substitutes); None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 is not installed (ip, tc; Debian: apt-get install iproute2)"
    probe = f"fpprobe{secrets.token_hex(3)}"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if added.returncode != 0:
        return f"`ip netns add` fails here: {added.stderr.strip()}"
    try:
        if netem_available(probe, "lo"):
            return None
        return substitute_problem()
    finally:
        subprocess.run(["ip", "netns", "del", probe], check=False)


@dataclasses.dataclass
class Host:
    """One host: its namespace, its address, its port's name on the router and its
    impaired link (None: a clean one)."""

    name: str
    namespace: str
    address: str
    port: str
    link: ImpairedLink | None = None


class Network:
    """A router namespace and the hosts added to it; everything is removed on
    :meth:`close` (also when a setup step fails). ``log_dir`` receives the logs of the
    delay programs that stand in for netem."""

    def __init__(self, log_dir: Path, *, prefix: str | None = None) -> None:
        self.prefix = prefix or f"fp{secrets.token_hex(3)}"
        self.log_dir = log_dir
        self.router = f"{self.prefix}-router"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._netem: bool | None = None

    def __enter__(self) -> Network:
        try:
            self._add_namespace(self.router)
            run_in(self.router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def mechanism(self) -> str:
        """How the links are impaired (``netem`` or its substitutes), once one is."""
        links = {host.link.mechanism for host in self.hosts.values() if host.link}
        return ", ".join(sorted(links)) or "no impaired link"

    def add_host(self, name: str, impairment: Impairment | None = None) -> Host:
        """A new host ``name`` linked to the router, its link impaired by ``impairment``."""
        index = len(self.hosts)
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists already; give each host its own name")
        if index > 250:
            raise ValueError(
                f"a Network holds at most 251 hosts; {name!r} would be the {index + 1}th"
            )
        host = Host(
            name,
            f"{self.prefix}-{name}",
            f"{SUBNET}.{index}.2",
            f"h{index}",
        )
        self.hosts[name] = host
        self._add_namespace(host.namespace)
        gateway = f"{SUBNET}.{index}.1"
        _ip(self.router, "link", "add", host.port, "type", "veth", "peer", "name", DEVICE,
            "netns", host.namespace)  # fmt: skip
        _ip(self.router, "addr", "add", f"{gateway}/24", "dev", host.port)
        _ip(host.namespace, "addr", "add", f"{host.address}/24", "dev", DEVICE)
        for namespace, device in ((self.router, host.port), (host.namespace, DEVICE)):
            # One wire-sized packet per buffer, as on a real link: loss drops single packets.
            _ip(namespace, "link", "set", device, "gso_max_segs", "1", "up")
        _ip(host.namespace, "route", "add", "default", "via", gateway)
        if impairment is not None:
            if self._netem is None:
                self._netem = netem_available(self.router, host.port)
            host.link = impair(
                impairment,
                router=self.router,
                port=host.port,
                host=host.namespace,
                device=DEVICE,
                queue=index,
                netem=self._netem,
                log_path=self.log_dir / f"link-{name}.log",
            )
        return host

    def command(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run on ``host``."""
        return netns_exec(self.hosts[host].namespace, argv)

    def set_link(self, host: str, *, up: bool) -> None:
        """Take ``host``'s link down at the router (its cable pulled: packets to and
        from it vanish, its own interface stays configured) or bring it back."""
        _ip(self.router, "link", "set", self.hosts[host].port, "up" if up else "down")

    def listening(self, host: str, port: int) -> bool:
        """Whether a TCP socket on ``host`` listens on ``port``."""
        done = run_in(self.hosts[host].namespace, ["ss", "-Hltn", f"sport = :{port}"], check=False)
        return bool(done.stdout.strip())

    def wait_listening(
        self, host: str, port: int, *, timeout: float, alive: Callable[[], bool]
    ) -> None:
        """Block until ``host`` listens on ``port``; ``alive()`` False ends the wait."""
        deadline = time.monotonic() + timeout
        while not self.listening(host, port):
            if not alive() or time.monotonic() > deadline:
                raise TimeoutError(f"nothing listened on {host}:{port} within {timeout:.0f} s")
            time.sleep(0.3)

    def close(self) -> None:
        """Stop the delay programs, end every process still in a namespace and delete
        the namespaces (their links go with them)."""
        for host in self.hosts.values():
            if host.link is not None:
                host.link.stop()
        for namespace in reversed(self._namespaces):
            _kill_all(namespace)
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)
        self._namespaces.clear()

    def _add_namespace(self, namespace: str) -> None:
        subprocess.run(["ip", "netns", "add", namespace], check=True, capture_output=True)
        self._namespaces.append(namespace)
        _ip(namespace, "link", "set", "lo", "up")


def _ip(namespace: str, *arguments: str) -> None:
    """``ip -n namespace arguments...``; a clear error with ip's message if it fails."""
    done = subprocess.run(["ip", "-n", namespace, *arguments], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(arguments)}` in {namespace}: {done.stderr.strip()}")


def _kill_all(namespace: str) -> None:
    """SIGKILL every process left in ``namespace`` (each one this network's user started
    there), by PID."""
    done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    for pid in (int(p) for p in done.stdout.split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
