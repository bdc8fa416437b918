"""``python -m fedpriv.deployment.supernode``: Flower's ``flower-supernode`` with its
waits shortened while a run is busy.

Flower 1.41's SuperNode loop (``flwr/supernode/start_client_internal.py``) has three fixed
waits and no setting for any of them: 3 s after a pull from the SuperLink finds no
message, and 0.5 s between checks for the ClientApp's reply and for the reply's contents.
Every exchange of a deployed run pays them: a node pulls right after pushing its reply,
finds nothing (the server is still waiting for the other nodes) and sleeps 3 s, and its
reply waits up to 0.5 s in the node before it leaves.

This module runs Flower's own entry point, unchanged, after handing that one module a
``time`` whose ``sleep`` turns those waits into fedpriv's: the reply checks every
:data:`REPLY_POLL_S`, and the idle pull after :func:`idle_wait` -- ``--poll-interval``
right after the node's last reply, growing with the time it has had nothing to do (a
tenth of it) up to Flower's 3 s, so that an idle fleet loads its SuperLink as Flower's
does. The protocol, its messages and their order are Flower's.

It also shortens Flower's object-pull backoff (:mod:`fedpriv.deployment.object_pulls`).
Both patches are written for one version of Flower's code and refuse to start on any
other (:mod:`fedpriv.deployment.flower_pins`).
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import inspect
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from fedpriv.deployment.flower_pins import FlowerChanged, check_pins
from fedpriv.deployment.object_pulls import shorten_object_pulls

#: SHA-256 of the source of each function this module patches or depends on, in
#: flwr/supernode/start_client_internal.py of flwr 1.41.0.
PINNED_SOURCE = {
    "start_client_internal": "9e89a6eb68fbec6821e817cd2c09f7894fc7b0f5725c2365b19a7122307f11f3",
    "_push_messages": "00bb86faffdec114db87e7f716af2acd901d12284e44f51f5c2a84704db05f64",
}
#: Flower's ``time.sleep`` arguments in that module, in source order: the idle pull's
#: wait, the check for a reply, the check for the reply's contents.
FLOWER_WAITS = (3, 0.5, 0.5)
IDLE_WAIT_S, REPLY_WAIT_S = 3, 0.5

#: The shortest wait between two pulls that found nothing (``--poll-interval``).
POLL_INTERVAL_S = 0.05
#: The idle wait grows by this fraction of the time since the node's last reply
#: (``--idle-growth``; 0 keeps it at ``--poll-interval``).
IDLE_GROWTH = 0.1
#: Between two checks for the ClientApp's reply (a local look-up, no network).
REPLY_POLL_S = 0.01


def flower_loop() -> ModuleType:
    """Flower's SuperNode loop module, the one this patch changes."""
    return importlib.import_module("flwr.supernode.start_client_internal")


def check_flower_source(module: ModuleType) -> None:
    """Raise :class:`FlowerChanged` unless ``module`` holds exactly the functions and
    waits this patch was written for."""
    check_pins(
        __name__,
        {name: (getattr(module, name), pinned) for name, pinned in PINNED_SOURCE.items()},
    )
    waits = sleep_arguments(inspect.getsource(module))
    if waits != FLOWER_WAITS:
        raise FlowerChanged(
            f"{module.__name__}'s time.sleep() calls are {waits}, not {FLOWER_WAITS}; "
            f"update {__name__}"
        )


def sleep_arguments(source: str) -> tuple[object, ...]:
    """The literal argument of every ``time.sleep(...)`` call in ``source``, in order."""
    calls = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "sleep"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "time"
    ]
    calls.sort(key=lambda call: (call.lineno, call.col_offset))
    return tuple(
        call.args[0].value if call.args and isinstance(call.args[0], ast.Constant) else None
        for call in calls
    )


def idle_wait(idle_s: float, poll_interval: float, growth: float = IDLE_GROWTH) -> float:
    """Seconds to wait after a pull that found nothing, ``idle_s`` after the node's last
    reply: ``poll_interval``, then ``growth`` (a tenth) of the idle time, at most
    Flower's 3 s. A message is thus picked up within ``poll_interval`` or 10 % of the
    time the node waited for it."""
    return min(float(IDLE_WAIT_S), max(poll_interval, growth * idle_s))


class LoopClock:
    """The ``time`` module as Flower's SuperNode loop sees it: ``sleep`` maps Flower's
    waits to fedpriv's, every other name is :mod:`time`'s."""

    def __init__(self, poll_interval: float, growth: float = IDLE_GROWTH) -> None:
        self.poll_interval, self.growth = poll_interval, growth
        self.last_reply = time.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if seconds == IDLE_WAIT_S:
            idle_s = time.monotonic() - self.last_reply
            seconds = idle_wait(idle_s, self.poll_interval, self.growth)
        elif seconds == REPLY_WAIT_S:
            seconds = REPLY_POLL_S
        time.sleep(seconds)

    def after_reply(self, push: Callable[..., None]) -> Callable[..., None]:
        """``push`` (Flower's ``_push_messages``), noting when it returns."""

        @functools.wraps(push)
        def pushed(*args: Any, **kwargs: Any) -> None:
            try:
                push(*args, **kwargs)
            finally:
                self.last_reply = time.monotonic()

        return pushed


def patch(
    module: ModuleType, poll_interval: float = POLL_INTERVAL_S, growth: float = IDLE_GROWTH
) -> LoopClock:
    """Check ``module`` (Flower's SuperNode loop) and shorten its waits; the clock."""
    check_flower_source(module)
    clock = LoopClock(poll_interval, growth)
    module._push_messages = clock.after_reply(module._push_messages)  # type: ignore[attr-defined]
    module.time = clock  # type: ignore[attr-defined]
    return clock


def main(argv: list[str] | None = None) -> None:
    """Patch, then run ``flower-supernode`` with the remaining arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m fedpriv.deployment.supernode", allow_abbrev=False, add_help=False
    )
    parser.add_argument("--poll-interval", type=float, default=POLL_INTERVAL_S)
    parser.add_argument("--idle-growth", type=float, default=IDLE_GROWTH)
    args, flower_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not 0 < args.poll_interval <= IDLE_WAIT_S:
        parser.error(
            f"--poll-interval {args.poll_interval:g} must be in (0, {IDLE_WAIT_S}] seconds "
            f"(the default is {POLL_INTERVAL_S:g}; Flower's own wait is {IDLE_WAIT_S})"
        )
    if not 0 <= args.idle_growth <= 1:
        parser.error(
            f"--idle-growth {args.idle_growth:g} must be in [0, 1] (the default is "
            f"{IDLE_GROWTH:g}; 0 polls every --poll-interval however long the node is idle)"
        )
    shorten_object_pulls()
    patch(flower_loop(), args.poll_interval, args.idle_growth)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
