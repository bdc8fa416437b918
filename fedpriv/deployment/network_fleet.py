"""A fleet across an emulated network: the SuperLink and each SuperNode on a host of
their own (:class:`fedpriv.deployment.network.Network`), started with the commands an
operator types on real hosts (``fedpriv superlink``, ``fedpriv supernode``), every
device's link impaired.

The server's certificate names the server's address on that network, so each device
checks it as it would a real server's; the run is submitted on the server host, as
``docs/deployment.md`` says. For the tests of ``tests/deployment/test_network_fleet.py``
and for trying a fleet on a slow network before buying devices.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedpriv.crypto.ckks import CkksParams
from fedpriv.deployment.credentials import FleetKeys, write_fleet_keys
from fedpriv.deployment.fleet import API_PORT, FLEET_PORT
from fedpriv.deployment.impairment import Impairment
from fedpriv.deployment.network import Network
from fedpriv.deployment.processes import FlowerProcess

SERVER = "server"


def device(k: int) -> str:
    """The host name of device ``k``."""
    return f"device-{k}"


def fedpriv_script() -> str:
    return str(Path(sys.executable).parent / "fedpriv")


class NetworkFleet:
    """A server host running ``fedpriv superlink`` and ``nodes`` device hosts running
    ``fedpriv supernode`` with TLS and node authentication, each device's link impaired
    by ``impairment`` (the server's is clean); everything is stopped and removed on
    exit. ``directory`` holds the keys, the logs and each host's Flower home."""

    def __init__(
        self,
        directory: Path,
        *,
        nodes: int,
        impairment: Impairment | None = None,
        ckks: CkksParams | None = None,
    ) -> None:
        self.directory = directory
        self.count = nodes
        self.impairment = impairment or Impairment()
        self.ckks = ckks
        self.logs = directory / "logs"
        self.network = Network(self.logs)
        self.keys: FleetKeys | None = None
        self.processes: dict[str, FlowerProcess] = {}

    @property
    def server_address(self) -> str:
        return self.network.hosts[SERVER].address

    def __enter__(self) -> NetworkFleet:
        self.network.__enter__()
        try:
            server = self.network.add_host(SERVER)
            for k in range(self.count):
                self.network.add_host(device(k), self.impairment)
            self.keys = write_fleet_keys(
                self.directory / "keys", nodes=self.count, hosts=[server.address], ckks=self.ckks
            )
            link = self._start(SERVER, ["superlink", str(self.keys.superlink.directory)])
            self.network.wait_listening(SERVER, FLEET_PORT, timeout=180, alive=link.alive)
            for k in range(self.count):
                self._start(
                    device(k),
                    [
                        "supernode",
                        str(self.keys.device(k).directory),
                        "--superlink",
                        f"{server.address}:{FLEET_PORT}",
                        "--partition-id",
                        str(k),
                        "--num-partitions",
                        str(self.count),
                    ],
                )
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, host: str, arguments: list[str]) -> FlowerProcess:
        env = {"FLWR_HOME": str(self.directory / "flwr-home" / host)}
        process = FlowerProcess(
            f"fedpriv {arguments[0]} ({host})",
            self.network.command(host, [fedpriv_script(), *arguments]),
            self.logs / f"{host}.log",
            env,
        )
        self.processes[host] = process
        return process

    def stop(self) -> None:
        """Heal every link (so each process can say goodbye instead of retrying into a
        dead link), stop the devices' fedpriv commands together, then the server's (each
        stops its Flower processes), then remove the network: any process left in it is
        killed by PID."""
        for host in self.network.hosts:
            with contextlib.suppress(RuntimeError):
                self.network.set_link(host, up=True)
        devices = [p for host, p in self.processes.items() if host != SERVER]
        with ThreadPoolExecutor(max_workers=max(1, len(devices))) as pool:
            list(pool.map(lambda process: process.stop(timeout=20), devices))
        if SERVER in self.processes:
            self.processes[SERVER].stop(timeout=20)
        self.network.close()

    def engine_overrides(self) -> list[str]:
        """Hydra overrides for ``fedpriv run`` on the server host."""
        assert self.keys is not None, "enter the fleet first"
        return [
            "engine=deployment",
            f"engine.address=127.0.0.1:{API_PORT}",
            f"engine.root_certificates={self.keys.superlink.ca_cert}",
        ]

    def run(self, overrides: list[str]) -> subprocess.Popen[str]:
        """``fedpriv run`` on the server host with this fleet's engine and ``overrides``;
        its output (stdout and stderr) on the returned process' stdout."""
        command = [fedpriv_script(), "run", *self.engine_overrides(), *overrides]
        return subprocess.Popen(
            self.network.command(SERVER, command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def set_link(self, k: int, *, up: bool) -> None:
        """Take device ``k``'s link down or bring it back."""
        self.network.set_link(device(k), up=up)

    def partition(self) -> None:
        """Cut the server off from every device (its link down at the router)."""
        self.network.set_link(SERVER, up=False)
