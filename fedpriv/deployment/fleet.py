"""A SuperLink and SuperNodes as fedpriv starts them: ``fedpriv superlink``,
``fedpriv supernode``, and :class:`LocalFleet` (all of it on one machine, for tests,
benchmarks and trying a deployment out).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedpriv.crypto.ckks import CkksParams
from fedpriv.deployment.credentials import Credentials, FleetKeys, write_fleet_keys
from fedpriv.deployment.enrolment import enrol_exactly
from fedpriv.deployment.processes import (
    SUPERLINK_HOST,
    FlowerProcess,
    executor_command,
    free_port,
    superexec_secret,
    superlink_command,
    supernode_command,
    wait_for_port,
)
from fedpriv.deployment.proxy import nginx_binary, start_fleet_proxy
from fedpriv.deployment.supernode import POLL_INTERVAL_S
from fedpriv.runtime.node_store import STATE_DIR

log = logging.getLogger("fedpriv")

#: Where devices reach the SuperLink: the Fleet proxy (Flower's usual Fleet port).
FLEET_PORT = 9092
#: The SuperLink's own listener on 127.0.0.1: Control, ServerAppIO and Fleet (the
#: port `flwr` and `fedpriv run engine.address=localhost:9093` use on the server).
API_PORT = 9093
#: The SuperNode's local Runtime API, where the warm executor picks up tasks.
RUNTIME_PORT = 9094


class Superlink:
    """flower-superlink on 127.0.0.1, the guarded executor that runs its ServerApps, and
    the Fleet proxy on the public address, started and stopped together."""

    def __init__(self, link: FlowerProcess, executor: FlowerProcess, proxy: FlowerProcess) -> None:
        self.link, self.executor, self.proxy = link, executor, proxy

    @property
    def processes(self) -> list[FlowerProcess]:
        return [self.link, self.executor, self.proxy]

    @property
    def pid(self) -> int:
        return self.link.pid

    def alive(self) -> bool:
        return all(process.alive() for process in self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def start_superlink(
    creds: Credentials | None,
    *,
    host: str = "0.0.0.0",
    port: int = FLEET_PORT,
    api_port: int = API_PORT,
    database: str | None = None,
    log_dir: Path | None = None,
    flwr_home: Path | None = None,
) -> Superlink:
    """Start ``flower-superlink`` on 127.0.0.1:``api_port`` with fedpriv's guarded
    executor for its ServerApps, make its registered nodes exactly ``creds``'
    ``nodes/*.pub``, then open the Fleet proxy on ``host:port``."""
    nginx_binary()  # fail before starting anything when the proxy cannot start
    env = {"FLWR_HOME": str(flwr_home)} if flwr_home else None
    secret = superexec_secret("fedpriv-superlink-")
    link = FlowerProcess(
        "flower-superlink",
        superlink_command(creds, port=api_port, database=database, superexec_secret=secret),
        log_dir / "superlink.log" if log_dir else None,
        env,
        cleanup=secret.parent,
    )
    executor: FlowerProcess | None = None
    try:
        wait_for_port(SUPERLINK_HOST, api_port, timeout=120, process=link)
        executor = FlowerProcess(
            "fedpriv executor (ServerApp)",
            executor_command(
                f"{SUPERLINK_HOST}:{api_port}",
                root_certificates=None if creds is None else creds.ca_cert.resolve(),
                parent_pid=link.pid,
                superexec_secret=secret,
            ),
            log_dir / "superlink-executor.log" if log_dir else None,
            env,
        )
        if creds is not None:
            enrol_exactly(
                f"{SUPERLINK_HOST}:{api_port}",
                ca_cert=creds.ca_cert,
                public_keys=creds.node_public_keys(),
            )
        proxy = start_fleet_proxy(
            creds,
            host=host,
            port=port,
            upstream_port=api_port,
            log_path=log_dir / "fleet-proxy.log" if log_dir else None,
        )
    except BaseException:
        if executor is not None:
            executor.stop()
        link.stop()
        raise
    return Superlink(link, executor, proxy)


class Supernode:
    """``flower-supernode --isolation process`` and the warm executor that runs its
    ClientApp tasks (:mod:`fedpriv.deployment.executor`), started and stopped together.
    They share a SuperExec secret: no other process on the device can acquire a task
    (and its token) from the SuperNode's loopback Runtime API.

    ``warm=False`` leaves Flower's default: a fresh ``flwr-clientapp`` process per
    message (the benchmark's baseline). ``poll_interval`` is the fastest the SuperNode
    asks the SuperLink for a message (:mod:`fedpriv.deployment.supernode`); None runs
    Flower's own ``flower-supernode``, which asks every 3 s.
    """

    def __init__(
        self,
        creds: Credentials | None,
        *,
        superlink: str,
        partition_id: int,
        num_partitions: int,
        data: str | None = None,
        runtime_port: int = RUNTIME_PORT,
        log_dir: Path | None = None,
        flwr_home: Path | None = None,
        warm: bool = True,
        poll_interval: float | None = POLL_INTERVAL_S,
        state_dir: str | Path | None = None,
    ) -> None:
        node_config: dict[str, str | int] = {
            "partition-id": partition_id,
            "num-partitions": num_partitions,
        }
        if state_dir is not None:  # the device's own copy of what it spent
            node_config[STATE_DIR] = str(Path(state_dir).expanduser().resolve())
        if data:
            node_config["data-path"] = str(Path(data).resolve())
        if creds is not None:
            node_config["keys-dir"] = str(creds.directory.resolve())
        env = {"FLWR_HOME": str(flwr_home)} if flwr_home else None
        name = f"node-{partition_id}"
        self.runtime_port = runtime_port
        command = supernode_command(
            creds,
            superlink=superlink,
            node_config=node_config,
            node_key=creds.node_key(partition_id) if creds else None,
            runtime_port=runtime_port,
            poll_interval=poll_interval,
        )
        self.executor: FlowerProcess | None = None
        if not warm:
            self.supernode = FlowerProcess(
                f"flower-supernode ({name})",
                command,
                log_dir / f"{name}.log" if log_dir else None,
                env,
            )
            return
        secret = superexec_secret(f"fedpriv-{name}-")
        command += ["--isolation", "process", "--superexec-auth-secret-file", str(secret)]
        self.supernode = FlowerProcess(
            f"flower-supernode ({name})",
            command,
            log_dir / f"{name}.log" if log_dir else None,
            env,
            cleanup=secret.parent,
        )
        self.executor = FlowerProcess(
            f"fedpriv executor ({name})",
            executor_command(
                f"127.0.0.1:{runtime_port}",
                root_certificates=None,
                parent_pid=self.supernode.pid,
                superexec_secret=secret,
            ),
            log_dir / f"{name}-executor.log" if log_dir else None,
            env,
        )

    @property
    def processes(self) -> list[FlowerProcess]:
        return [self.supernode, *([self.executor] if self.executor else [])]

    def alive(self) -> bool:
        return all(process.alive() for process in self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def kill(self) -> None:
        """Every process SIGKILLed at once, as a device losing power."""
        for process in self.processes:
            process.kill()


class LocalFleet:
    """A SuperLink (with its Fleet proxy) and ``nodes`` SuperNodes on this machine with
    fresh key bundles, TLS and node authentication; every process is stopped on exit.

    ``host`` is where the Fleet proxy listens (``0.0.0.0`` to face the network like a
    real server); SuperNodes and the server's tools connect over 127.0.0.1. With
    ``ckks``, every bundle also gets its CKKS files. ``warm`` is :class:`Supernode`'s;
    ``fast_poll=False`` runs Flower's own ``flower-supernode``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        nodes: int,
        insecure: bool = False,
        warm: bool = True,
        fast_poll: bool = True,
        host: str = "127.0.0.1",
        ckks: CkksParams | None = None,
    ) -> None:
        self.directory = directory
        self.warm = warm
        self.fast_poll = fast_poll
        self.host = host
        self.keys: FleetKeys | None = (
            None if insecure else write_fleet_keys(directory / "keys", nodes=nodes, ckks=ckks)
        )
        self.creds = None if self.keys is None else self.keys.superlink
        self.port, self.api_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.api_address = f"127.0.0.1:{self.api_port}"
        self.home = directory / "flwr-home"
        self.nodes: list[Supernode] = []
        self.superlink: Superlink | None = None
        self.count = nodes

    def __enter__(self) -> LocalFleet:
        try:
            self.superlink = start_superlink(
                self.creds,
                host=self.host,
                port=self.port,
                api_port=self.api_port,
                log_dir=self.directory / "logs",
                flwr_home=self.home,
            )
            for k in range(self.count):
                self.nodes.append(
                    Supernode(
                        None if self.keys is None else self.keys.device(k),
                        superlink=self.address,
                        partition_id=k,
                        num_partitions=self.count,
                        runtime_port=free_port(),
                        log_dir=self.directory / "logs",
                        flwr_home=self.home,
                        warm=self.warm,
                        poll_interval=POLL_INTERVAL_S if self.fast_poll else None,
                        state_dir=self.directory / "state" / f"node-{k}",
                    )
                )
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart(self) -> None:
        """Stop every process and start them again on the same ports, with the same keys
        and state directories: the server and its devices rebooting (a real device's
        supervisor restarts ``fedpriv supernode``, which exits when its SuperLink forgets
        it). The SuperLink goes first, taking its running ServerApp with it."""
        if self.superlink is not None:
            self.superlink.stop()
        self.stop()
        self.nodes, self.superlink = [], None
        self.__enter__()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.superlink is not None:
            self.superlink.stop()

    def pids(self) -> list[int]:
        processes = [p for node in self.nodes for p in node.processes]
        if self.superlink is not None:
            processes += self.superlink.processes
        return [p.pid for p in processes]

    def engine_overrides(self) -> list[str]:
        """Hydra overrides pointing ``engine=deployment`` at this fleet (its Control
        API, on 127.0.0.1: runs are submitted from the server host)."""
        out = ["engine=deployment", f"engine.address={self.api_address}"]
        if self.creds is None:
            return [*out, "engine.insecure=true"]
        return [*out, f"engine.root_certificates={self.creds.ca_cert}"]
