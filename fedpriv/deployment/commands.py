"""``fedpriv superlink`` and ``fedpriv supernode``: a fleet's long-running processes.

Each command runs in the foreground (as systemd, Docker or a terminal expect), starts
Flower's processes with fedpriv's security settings, and stops them by PID when it is
stopped itself (SIGTERM or Ctrl-C).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

from fedpriv.deployment.credentials import Credentials
from fedpriv.deployment.fleet import (
    API_PORT,
    FLEET_PORT,
    RUNTIME_PORT,
    Superlink,
    Supernode,
    start_superlink,
)
from fedpriv.deployment.processes import INSECURE_WARNING
from fedpriv.deployment.supernode import POLL_INTERVAL_S

log = logging.getLogger("fedpriv")


def superlink(
    keys: str,
    *,
    host: str = "0.0.0.0",
    port: int = FLEET_PORT,
    api_port: int = API_PORT,
    database: str | None = None,
    insecure: bool = False,
) -> int:
    """Run the SuperLink on 127.0.0.1 and nginx for the Fleet API on ``host:port`` until
    stopped; the exit code."""
    if port == api_port:
        print(f"error: --port and --api-port are both {port}; give two ports", file=sys.stderr)
        return 2
    creds = _credentials(keys, insecure, needs=("ca.crt", "server.pem", "server.key"))
    if creds is None and not insecure:
        return 2
    _log_to_terminal()
    try:
        superlink = start_superlink(
            creds, host=host, port=port, api_port=api_port, database=database
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log.info(
        "SuperLink on 127.0.0.1:%d (pid %d); Fleet API for devices on %s:%d (nginx, pid %d)",
        api_port,
        superlink.link.pid,
        host,
        port,
        superlink.proxy.pid,
    )
    return _hold(superlink)


def supernode(
    keys: str,
    *,
    superlink: str,
    partition_id: int,
    num_partitions: int,
    data: str | None = None,
    runtime_port: int = RUNTIME_PORT,
    poll_interval: float = POLL_INTERVAL_S,
    insecure: bool = False,
    state_dir: str | None = None,
) -> int:
    """Run a device's SuperNode and its warm executor until stopped; the exit code."""
    if not 0 <= partition_id < num_partitions:
        print(
            f"error: --partition-id {partition_id} must be in "
            f"0..{num_partitions - 1} (--num-partitions {num_partitions})",
            file=sys.stderr,
        )
        return 2
    if data and not Path(data).is_file():
        print(f"error: --data {data}: no such file", file=sys.stderr)
        return 2
    key = f"nodes/node-{partition_id}.key"
    creds = _credentials(keys, insecure, needs=("ca.crt", key))
    if creds is None and not insecure:
        return 2
    _log_to_terminal()
    node = Supernode(
        creds,
        superlink=superlink,
        partition_id=partition_id,
        num_partitions=num_partitions,
        data=data,
        runtime_port=runtime_port,
        poll_interval=poll_interval,
        state_dir=state_dir,
    )
    pids = ", ".join(str(process.pid) for process in node.processes)
    log.info("SuperNode %d -> %s (pids %s)", partition_id, superlink, pids)
    return _hold(node)


def _credentials(keys: str, insecure: bool, needs: tuple[str, ...]) -> Credentials | None:
    if insecure:
        print(INSECURE_WARNING, file=sys.stderr)
        return None
    missing = [name for name in needs if not (Path(keys) / name).is_file()]
    if missing:
        print(
            f"error: {keys} lacks {', '.join(missing)}; make the fleet's keys with "
            "`fedpriv keys init --out <dir> --nodes <devices>` and copy this host's bundle "
            "(<dir>/superlink/ or <dir>/device-<k>/)",
            file=sys.stderr,
        )
        return None
    return Credentials(Path(keys).resolve())


def _hold(process: Superlink | Supernode) -> int:
    """Wait while the processes run; stop them on SIGTERM/SIGINT or when one exits."""

    def stop(signum: int, frame: object) -> NoReturn:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        while process.alive():
            time.sleep(1)
        log.error("a Flower process exited; stopping")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        process.stop()


def _log_to_terminal() -> None:
    from fedpriv.logs import setup_logging

    setup_logging()
