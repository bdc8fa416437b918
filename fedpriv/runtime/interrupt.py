"""Ctrl-C during a run: the first stops it after the round in progress, with a
checkpoint to resume from; the second stops it at once.

Flower's simulation runs the ServerApp in a thread and Ray's actors in their own
processes, so Python's default (KeyboardInterrupt in the main thread) reached neither:
the run went on to its last round. While a run is open, fedpriv handles SIGINT itself:
the first sets a flag that the round loop reads after each round, the second raises
KeyboardInterrupt in the main thread. Signals are only handled in the main thread; a
run started from another thread keeps the process' own handling.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger("fedpriv")

_requested = threading.Event()


def requested() -> bool:
    """Whether Ctrl-C asked the run to stop after this round."""
    return _requested.is_set()


def _handle(signum: int, frame: FrameType | None) -> None:
    if _requested.is_set():
        raise KeyboardInterrupt
    _requested.set()
    log.warning(
        "Ctrl-C: stopping after this round, with a checkpoint to resume from "
        "(Ctrl-C again stops at once)"
    )


@contextlib.contextmanager
def stop_on_ctrl_c() -> Iterator[None]:
    """Handle SIGINT as above while the block runs (a run), then restore the handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    previous = signal.signal(signal.SIGINT, _handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()
