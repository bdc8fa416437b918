"""Process parallelism for TenSEAL, which holds the GIL and works one ciphertext at a time.

Threads cannot help, so work is split over forked processes. Forking (not spawning) is
what makes this pay: a forked worker sees the round's ciphertexts and vectors in the
parent's memory without copying them through a pipe; only its results travel back.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: The work of the current :func:`map_spans` call, inherited by its forked workers.
_WORK: Callable[[int, int], Any] | None = None


def _run_span(span: tuple[int, int]) -> Any:
    assert _WORK is not None
    return _WORK(*span)


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_spans(
    work: Callable[[int, int], list[T]], count: int, workers: int, min_per_worker: int = 8
) -> list[T]:
    """``work(start, stop)`` over ``range(count)``, one contiguous span per worker process,
    results concatenated in order.

    Runs in this process when one worker suffices (fewer than ``2 × min_per_worker``
    items: a fork costs more than it saves) or where ``fork`` does not exist. ``work``
    must build its own TenSEAL context (:func:`fedpriv.crypto.ckks.load_context`): a
    context's thread pool does not survive a fork. The pool is closed, and its
    processes stopped, before this returns.
    """
    global _WORK
    workers = max(1, min(workers, count // max(1, min_per_worker)))
    if workers == 1 or "fork" not in multiprocessing.get_all_start_methods():
        return work(0, count)
    bounds = [count * i // workers for i in range(workers + 1)]
    spans = list(itertools.pairwise(bounds))
    _WORK = work
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_run_span, spans)
    finally:
        _WORK = None
    return [item for part in parts for item in part]
