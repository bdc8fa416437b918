"""A warm, guarded SuperExec: each ClientApp task (on a SuperNode) or ServerApp task (on
the SuperLink) runs in a fork of one process that has already imported torch, Opacus,
TenSEAL and fedpriv, and only if the run's app is fedpriv's.

Flower 1.41 runs every message in a fresh ``flwr-clientapp`` process, which on a small
device spends 7-20 s importing torch before any work. With ``flower-supernode
--isolation process`` the SuperNode leaves launching to an external SuperExec; this
is Flower's own SuperExec loop (``run_superexec``) with one change: its executor forks
this warm process instead of starting a new interpreter. The child runs Flower's
unmodified ``flwr-clientapp`` (or ``flwr-serverapp``) entry point, so message handling,
node state in ``context.state`` and error replies are exactly Flower's. Its object
pulls retry sooner (:mod:`fedpriv.deployment.object_pulls`), and its FAB installation
is guarded, so that a task of any app but fedpriv's is refused
(:mod:`fedpriv.deployment.app_guard`). On the SuperLink (``flower-superlink --isolation
process``) the same loop runs ServerApps: an app submitted by anyone who reaches the
Control API runs no code on the server either.

``python -m fedpriv.deployment.executor --runtime-api-address 127.0.0.1:9094``
(``fedpriv supernode`` starts it next to its SuperNode, ``fedpriv superlink`` next to
its SuperLink with ``--superexec-auth-secret-file``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Callable

from flwr.supercore.auth import load_superexec_auth_secret
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec import run_superexec as flower_superexec
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

from fedpriv.deployment.app_guard import install_guard
from fedpriv.deployment.object_pulls import shorten_object_pulls

#: How often the loop asks the SuperNode for a task (Flower's default: 1 s).
POLL_INTERVAL_S = "0.05"


def warm_up() -> None:
    """Import what every task needs, once, before any fork."""
    import opacus  # noqa: F401
    import tenseal  # noqa: F401
    import torch  # noqa: F401
    from flwr.superlink.cli import flwr_serverapp  # noqa: F401
    from flwr.supernode.cli import flwr_clientapp  # noqa: F401

    import fedpriv.deployment.apps  # noqa: F401
    from fedpriv.families import FAMILIES

    FAMILIES.names()  # imports every installed family


class ForkExecutor(SubprocessExecutor):
    """Flower's subprocess executor, forking this warm process for ClientApp and
    ServerApp tasks (any other kind is Flower's, started as Flower starts it)."""

    def __init__(self) -> None:
        self.children: set[int] = set()

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type not in TASKS:
            return super().launch(spec)
        pid = os.fork()
        if pid:
            self.children.add(pid)
            return LaunchResult.accepted()
        os._exit(_run_task(spec))  # the child never returns into the loop

    def reconcile(self) -> None:
        """Reap finished task processes."""
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            self.children.discard(pid)


def _flwr_clientapp() -> None:
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    flwr_clientapp()


def _flwr_serverapp() -> None:
    from flwr.superlink.cli.flwr_serverapp import flwr_serverapp

    flwr_serverapp()


#: The task kinds forked here, and Flower's entry point each runs in the child.
TASKS: dict[TaskType, tuple[str, Callable[[], None]]] = {
    TaskType.CLIENT_APP: ("flwr-clientapp", _flwr_clientapp),
    TaskType.SERVER_APP: ("flwr-serverapp", _flwr_serverapp),
}


def _run_task(spec: ExecutionSpec) -> int:
    """In the forked child: Flower's entry point for this task's kind and token."""
    name, entry_point = TASKS[spec.task_type]
    sys.argv = [name, "--runtime-api-address", spec.runtime_api_address]
    sys.argv += ["--token", spec.token]
    if spec.insecure:
        sys.argv.append("--insecure")
    elif spec.root_certificates_path is not None:
        sys.argv += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        sys.argv += ["--parent-pid", str(spec.parent_pid)]
    try:
        entry_point()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedpriv.deployment.executor")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--root-certificates")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument(
        "--superexec-auth-secret-file",
        help="the secret the Runtime API checks (the SuperLink's --superexec-auth-secret-file)",
    )
    args = parser.parse_args(argv)
    secret = load_superexec_auth_secret(args.superexec_auth_secret_file)
    os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", POLL_INTERVAL_S)
    warm_up()
    install_guard()
    shorten_object_pulls()  # inherited by every forked task
    executor = ForkExecutor()
    # Flower's loop, with this executor in place of the one it would build.
    flower_superexec.get_executor = lambda *_, **__: executor
    flower_superexec.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates_path=args.root_certificates,
        parent_pid=args.parent_pid,
        runtime_dependency_install=False,
        superexec_auth_secret=secret,
    )


if __name__ == "__main__":
    main()
