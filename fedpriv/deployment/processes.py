"""Start and stop Flower's own processes: ``flower-superlink`` and ``flower-supernode``.

Every process is started in its own session and stopped by PID (its whole process
group: the SuperNode's ClientApp subprocesses go with it). Flower's SuperExec helpers
watch their parent's PID and exit with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import tomli_w

from fedpriv.deployment.credentials import Credentials
from fedpriv.deployment.supernode import POLL_INTERVAL_S

log = logging.getLogger("fedpriv")

#: No runtime ``uv sync`` on any node: it would replace the pinned CPU torch.
ENVIRONMENT = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
INSECURE_WARNING = (
    "WARNING: --insecure: no TLS and no SuperNode authentication; anyone on the network "
    "can read the traffic and join the federation. Use it only on a trusted test network."
)


#: The name fedpriv gives its SuperLink connection in a ``$FLWR_HOME/config.toml``.
CONNECTION = "fedpriv"


def write_connection(home: Path, *, address: str, root_certificates: Path | None) -> str:
    """A ``$FLWR_HOME/config.toml`` naming one SuperLink for the ``flwr`` CLI (TLS checked
    against ``root_certificates``; None: insecure); returns the connection's name."""
    connection: dict[str, object] = {"address": address}
    if root_certificates is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(root_certificates.resolve())
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}})
    )
    return CONNECTION


def flower_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment, with this interpreter's scripts first on PATH (the SuperLink
    starts ``flower-superexec`` by name) and runtime installs off."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env.update(ENVIRONMENT)
    env.update(extra or {})
    return env


class FlowerProcess:
    """One started process, its output in a log file (None: this terminal)."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        cleanup: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.cleanup = cleanup
        self._log: IO[bytes] | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            list(command),
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            env=flower_environment(env),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout``; idempotent."""
        if self.alive():
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        _signal_group(self.pid, signal.SIGKILL)  # stragglers left in the group
        if self._log is not None:
            self._log.close()
        if self.cleanup is not None:
            shutil.rmtree(self.cleanup, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL, as a device losing power would."""
        _signal_group(self.pid, signal.SIGKILL)
        self.popen.wait()
        if self.cleanup is not None:
            shutil.rmtree(self.cleanup, ignore_errors=True)

    def tail(self, lines: int = 20) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


#: Flower's SuperNode with fedpriv's shorter waits.
SUPERNODE = "fedpriv.deployment.supernode"
#: Where flower-superlink listens: its one listener serves Control and ServerAppIO too.
SUPERLINK_HOST = "127.0.0.1"


def superlink_command(
    creds: Credentials | None,
    *,
    port: int,
    database: str | None = None,
    superexec_secret: Path | None = None,
) -> list[str]:
    """``flower-superlink`` on 127.0.0.1 only, with TLS and registered-node
    authentication (or, with no credentials, insecure). Devices reach its Fleet API
    through the Fleet proxy (:mod:`fedpriv.deployment.proxy`). With ``superexec_secret``
    it leaves ServerApps to an external SuperExec that proves that secret (fedpriv's
    guarded executor) instead of starting Flower's own."""
    command = [flower_script("flower-superlink"), "--host", SUPERLINK_HOST, "--port", str(port)]
    command += ["--disable-runtime-dependency-installation"]
    if superexec_secret is not None:
        command += ["--isolation", "process", "--superexec-auth-secret-file", str(superexec_secret)]
    if database:
        command += ["--database", database]
    if creds is None:
        return [*command, "--insecure"]
    return [
        *command,
        "--ssl-ca-certfile",
        str(creds.ca_cert),
        "--ssl-certfile",
        str(creds.server_cert),
        "--ssl-keyfile",
        str(creds.server_key),
        "--enable-supernode-auth",
    ]


def supernode_command(
    creds: Credentials | None,
    *,
    superlink: str,
    node_config: Mapping[str, str | int],
    node_key: Path | None = None,
    runtime_port: int | None = None,
    poll_interval: float | None = POLL_INTERVAL_S,
) -> list[str]:
    """``flower-supernode`` verifying the SuperLink with the fleet CA and signing with
    its own node key (or, with no credentials, insecure). It runs as
    :mod:`fedpriv.deployment.supernode` (Flower's SuperNode with shorter waits) polling
    every ``poll_interval`` seconds at the fastest; None runs Flower's own."""
    config = " ".join(
        f"{key}={value}" if isinstance(value, int) else f'{key}="{value}"'
        for key, value in node_config.items()
    )
    command = (
        [flower_script("flower-supernode")]
        if poll_interval is None
        else [sys.executable, "-m", SUPERNODE, "--poll-interval", str(poll_interval)]
    )
    command += ["--superlink", superlink, "--node-config", config]
    if runtime_port is not None:
        command += ["--port", str(runtime_port)]
    if creds is None:
        return [*command, "--insecure"]
    if node_key is None:
        raise ValueError("a SuperNode with TLS needs its node key (nodes/node-<k>.key)")
    return [
        *command,
        "--root-certificates",
        str(creds.ca_cert),
        "--auth-supernode-private-key",
        str(node_key),
    ]


def superexec_secret(prefix: str) -> Path:
    """A fresh 32-byte secret in a new private folder (0700, the file 0600): the
    SuperExec secret a SuperLink or SuperNode and fedpriv's executor share, so that no
    other local process can acquire their tasks (and the tasks' tokens). Remove the
    folder (``path.parent``) when the processes stop."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    path = folder / "superexec.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(32))
    return path


def executor_command(
    runtime_address: str,
    *,
    root_certificates: Path | None,
    parent_pid: int,
    superexec_secret: Path | None = None,
) -> list[str]:
    """fedpriv's warm, guarded executor (:mod:`fedpriv.deployment.executor`) for the
    Runtime API at ``runtime_address`` (TLS checked against ``root_certificates``;
    None: plain HTTP, as a SuperNode's loopback Runtime API is)."""
    command = [sys.executable, "-m", "fedpriv.deployment.executor"]
    command += ["--runtime-api-address", runtime_address, "--parent-pid", str(parent_pid)]
    if root_certificates is None:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(root_certificates)]
    if superexec_secret is not None:
        command += ["--superexec-auth-secret-file", str(superexec_secret)]
    return command


def flower_script(name: str) -> str:
    """A console script of this interpreter's environment (found without PATH)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def wait_for_port(host: str, port: int, *, timeout: float, process: FlowerProcess) -> None:
    """Block until ``host:port`` accepts connections; a clear error if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(
                f"{process.name} exited with code {process.popen.returncode}:\n{process.tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{process.name} did not listen on {host}:{port} within {timeout:.0f} s")


def free_port() -> int:
    """A TCP port nothing listens on now (for tests and local fleets)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
