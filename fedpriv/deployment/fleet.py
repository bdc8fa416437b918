"""A SuperLink and SuperNodes as fedpriv starts them: ``fedpriv superlink``,
``fedpriv supernode``, and :class:`LocalFleet` (all of it on one machine, for tests,
benchmarks and trying a deployment out).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from fedpriv.deployment.credentials import Credentials, write_credentials
from fedpriv.deployment.processes import (
    FlowerProcess,
    flower_environment,
    flower_script,
    free_port,
    superlink_command,
    supernode_command,
    wait_for_port,
    write_connection,
)

log = logging.getLogger("fedpriv")

#: fedpriv's SuperLink port (Fleet, Control and Runtime APIs share it in Flower 1.41).
SUPERLINK_PORT = 9093
#: The SuperNode's local Runtime API, where the warm executor picks up tasks.
RUNTIME_PORT = 9094


def start_superlink(
    creds: Credentials | None,
    *,
    host: str = "0.0.0.0",
    port: int = SUPERLINK_PORT,
    database: str | None = None,
    log_path: Path | None = None,
    flwr_home: Path | None = None,
) -> FlowerProcess:
    """Start ``flower-superlink``, wait until it listens, and register every node key
    in ``creds`` (only registered nodes may join)."""
    env = {"FLWR_HOME": str(flwr_home)} if flwr_home else None
    superlink = FlowerProcess(
        "flower-superlink",
        superlink_command(creds, host=host, port=port, database=database),
        log_path,
        env,
    )
    try:
        wait_for_port(_local(host), port, timeout=120, process=superlink)
        if creds is not None:
            register_nodes(creds, f"{_local(host)}:{port}")
    except BaseException:
        superlink.stop()
        raise
    return superlink


def register_nodes(creds: Credentials, address: str) -> None:
    """``flwr supernode register`` for each ``nodes/node-<k>.pub``."""
    with tempfile.TemporaryDirectory(prefix="fedpriv-flwr-") as home:
        connection = write_connection(Path(home), address=address, root_certificates=creds.ca_cert)
        for public_key in creds.node_public_keys():
            done = subprocess.run(
                [flower_script("flwr"), "supernode", "register", str(public_key), connection],
                env=flower_environment({"FLWR_HOME": home}),
                capture_output=True,
                text=True,
                timeout=60,
            )
            output = (done.stdout + done.stderr).strip().splitlines()
            if done.returncode != 0 and "already" not in " ".join(output).lower():
                raise RuntimeError(f"registering {public_key.name} failed: {output[-3:]}")
            log.info("registered %s", public_key.name)


class Supernode:
    """``flower-supernode --isolation process`` and the warm executor that runs its
    ClientApp tasks (:mod:`fedpriv.deployment.executor`), started and stopped together.

    ``warm=False`` leaves Flower's default: a fresh ``flwr-clientapp`` process per
    message (the benchmark's baseline).
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
    ) -> None:
        node_config: dict[str, str | int] = {
            "partition-id": partition_id,
            "num-partitions": num_partitions,
        }
        if data:
            node_config["data-path"] = str(Path(data).resolve())
        if creds is not None:
            node_config["keys-dir"] = str(creds.directory.resolve())
        env = {"FLWR_HOME": str(flwr_home)} if flwr_home else None
        name = f"node-{partition_id}"
        command = supernode_command(
            creds,
            superlink=superlink,
            node_config=node_config,
            node_key=creds.node_key(partition_id) if creds else None,
            runtime_port=runtime_port,
        )
        self.supernode = FlowerProcess(
            f"flower-supernode ({name})",
            [*command, "--isolation", "process"] if warm else command,
            log_dir / f"{name}.log" if log_dir else None,
            env,
        )
        self.executor: FlowerProcess | None = None
        if not warm:
            return
        executor = [sys.executable, "-m", "fedpriv.deployment.executor"]
        executor += ["--runtime-api-address", f"127.0.0.1:{runtime_port}", "--insecure"]
        executor += ["--parent-pid", str(self.supernode.pid)]
        self.executor = FlowerProcess(
            f"fedpriv executor ({name})",
            executor,
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
    """A SuperLink and ``nodes`` SuperNodes on 127.0.0.1 with fresh credentials, TLS and
    node authentication; every process is stopped on exit."""

    def __init__(
        self, directory: Path, *, nodes: int, insecure: bool = False, warm: bool = True
    ) -> None:
        self.directory = directory
        self.warm = warm
        self.creds = None if insecure else write_credentials(directory / "keys", nodes=nodes)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.home = directory / "flwr-home"
        self.nodes: list[Supernode] = []
        self.superlink: FlowerProcess | None = None
        self.count = nodes

    def __enter__(self) -> LocalFleet:
        try:
            self.superlink = start_superlink(
                self.creds,
                host="127.0.0.1",
                port=self.port,
                log_path=self.directory / "logs" / "superlink.log",
                flwr_home=self.home,
            )
            for k in range(self.count):
                self.nodes.append(
                    Supernode(
                        self.creds,
                        superlink=self.address,
                        partition_id=k,
                        num_partitions=self.count,
                        runtime_port=free_port(),
                        log_dir=self.directory / "logs",
                        flwr_home=self.home,
                        warm=self.warm,
                    )
                )
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.superlink is not None:
            self.superlink.stop()

    def pids(self) -> list[int]:
        processes = [p for node in self.nodes for p in node.processes]
        return [p.pid for p in [*processes, *([self.superlink] if self.superlink else [])]]

    def engine_overrides(self) -> list[str]:
        """Hydra overrides pointing ``engine=deployment`` at this fleet."""
        out = ["engine=deployment", f"engine.address={self.address}"]
        if self.creds is None:
            return [*out, "engine.insecure=true"]
        return [*out, f"engine.root_certificates={self.creds.ca_cert}"]


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host
