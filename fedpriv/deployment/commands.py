"""``fedpriv superlink`` and ``fedpriv supernode``: a fleet's long-running processes.

Each command runs in the foreground (as systemd, Docker or a terminal expect), starts
Flower's processes with fedpriv's security settings, and stops them by PID when it is
stopped itself (SIGTERM or Ctrl-C).
"""

from __future__ import annotations

import argparse
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

log = logging.getLogger("fedpriv")


def superlink(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedpriv superlink")
    parser.add_argument("keys", help="the server's bundle of `fedpriv keys init` (superlink/)")
    parser.add_argument(
        "--host", default="0.0.0.0", help="where the Fleet API (devices only) listens"
    )
    parser.add_argument("--port", type=int, default=FLEET_PORT, help="the Fleet API's port")
    parser.add_argument(
        "--api-port",
        type=int,
        default=API_PORT,
        help="the SuperLink's own port on 127.0.0.1 (Control and ServerAppIO: `flwr`, "
        "`fedpriv run` on this host)",
    )
    parser.add_argument("--database", help="SQLite file for the SuperLink's state")
    parser.add_argument("--insecure", action="store_true", help="no TLS, no node auth")
    args = parser.parse_args(argv)
    if args.port == args.api_port:
        print(f"error: --port and --api-port are both {args.port}; give two ports", file=sys.stderr)
        return 2
    creds = _credentials(args.keys, args.insecure, needs=("ca.crt", "server.pem", "server.key"))
    if creds is None and not args.insecure:
        return 2
    _log_to_terminal()
    try:
        superlink = start_superlink(
            creds, host=args.host, port=args.port, api_port=args.api_port, database=args.database
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log.info(
        "SuperLink on 127.0.0.1:%d (pid %d); Fleet API for devices on %s:%d (nginx, pid %d)",
        args.api_port,
        superlink.link.pid,
        args.host,
        args.port,
        superlink.proxy.pid,
    )
    return _hold(superlink)


def supernode(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedpriv supernode")
    parser.add_argument("keys", help="the device's keys: ca.crt, nodes/node-<k>.key, client.ctx")
    parser.add_argument(
        "--superlink", required=True, help="HOST:PORT of the SuperLink's Fleet API (port 9092)"
    )
    parser.add_argument("--partition-id", type=int, required=True)
    parser.add_argument("--num-partitions", type=int, required=True)
    parser.add_argument("--data", help="this device's data: an .npz with arrays x and y")
    parser.add_argument("--runtime-port", type=int, default=RUNTIME_PORT)
    parser.add_argument("--insecure", action="store_true", help="no TLS, no node auth")
    args = parser.parse_args(argv)
    if not 0 <= args.partition_id < args.num_partitions:
        print(
            f"error: --partition-id {args.partition_id} must be in "
            f"0..{args.num_partitions - 1} (--num-partitions {args.num_partitions})",
            file=sys.stderr,
        )
        return 2
    if args.data and not Path(args.data).is_file():
        print(f"error: --data {args.data}: no such file", file=sys.stderr)
        return 2
    key = f"nodes/node-{args.partition_id}.key"
    creds = _credentials(args.keys, args.insecure, needs=("ca.crt", key))
    if creds is None and not args.insecure:
        return 2
    _log_to_terminal()
    node = Supernode(
        creds,
        superlink=args.superlink,
        partition_id=args.partition_id,
        num_partitions=args.num_partitions,
        data=args.data,
        runtime_port=args.runtime_port,
    )
    pids = ", ".join(str(process.pid) for process in node.processes)
    log.info("SuperNode %d -> %s (pids %s)", args.partition_id, args.superlink, pids)
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
