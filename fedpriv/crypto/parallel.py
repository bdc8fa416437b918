"""Process parallelism for TenSEAL, which holds the GIL and works one ciphertext at a time.

Threads cannot help, so work is split over processes, two ways, picked by where the
bytes are (both measured on a 2-core machine, benchmarks/he_aggregation.py):

* :func:`map_spans`, a persistent pool, forked once per process and reused every round,
  for small inputs with large outputs (a client's encryption: floats in, 4× the bytes of
  ciphertext out). A pool forked per call paid for copy-on-write faults on the parent's
  heap every time and gave no speed-up; the persistent one gives ~1.4×.
* :func:`map_spans_forked`, processes forked per call, for large inputs with small
  outputs (the server's sum: every client's ciphertexts in, one client's worth out).
  The workers read the inputs from the inherited memory; shipping them to a persistent
  pool instead made the sum 3-5× slower than doing it in one process.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_POOLS: dict[int, ProcessPoolExecutor] = {}
#: The work of the current :func:`map_spans_forked` call, inherited by its workers.
_FORKED_WORK: Callable[[int, int], Any] | None = None


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pool(workers: int) -> ProcessPoolExecutor:
    """This process's pool of ``workers`` processes (started on first use)."""
    if workers not in _POOLS:
        context = multiprocessing.get_context("fork")
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=context)
    return _POOLS[workers]


def shutdown() -> None:
    """Stop the pools this process started (also at interpreter exit)."""
    for executor in _POOLS.values():
        executor.shutdown(cancel_futures=True)
    _POOLS.clear()


atexit.register(shutdown)


def map_spans(
    function: Callable[..., list[T]],
    count: int,
    workers: int,
    span_args: Callable[[int, int], tuple[Any, ...]],
    min_per_worker: int = 64,
) -> list[T]:
    """``function(*span_args(start, stop))`` for one contiguous span of ``range(count)``
    per worker, results concatenated in order.

    ``function`` must be a module-level function (it is pickled to the workers) that
    builds its own TenSEAL context (:func:`fedpriv.crypto.ckks.load_context`).
    Runs in this process when one worker suffices (fewer than ``2 × min_per_worker``
    items: shipping the work costs more than it saves) or where ``fork`` does not exist.
    """
    workers = max(1, min(workers, count // max(1, min_per_worker)))
    if workers == 1 or "fork" not in multiprocessing.get_all_start_methods():
        return function(*span_args(0, count))
    bounds = [count * i // workers for i in range(workers + 1)]
    futures = [
        pool(workers).submit(function, *span_args(start, stop))
        for start, stop in itertools.pairwise(bounds)
    ]
    return [item for future in futures for item in future.result()]


def _run_forked_span(span: tuple[int, int]) -> Any:
    assert _FORKED_WORK is not None
    return _FORKED_WORK(*span)


def map_spans_forked(
    work: Callable[[int, int], list[T]], count: int, workers: int, min_per_worker: int = 16
) -> list[T]:
    """``work(start, stop)`` for one contiguous span of ``range(count)`` per worker forked
    for this call, results concatenated in order; ``work`` may be a closure over large
    inputs, which the workers see without copying. The processes are stopped before
    this returns. In this process when one worker suffices or ``fork`` does not exist.
    """
    global _FORKED_WORK
    workers = max(1, min(workers, count // max(1, min_per_worker)))
    if workers == 1 or "fork" not in multiprocessing.get_all_start_methods():
        return work(0, count)
    bounds = [count * i // workers for i in range(workers + 1)]
    _FORKED_WORK = work
    try:
        with multiprocessing.get_context("fork").Pool(workers) as forked:
            parts = forked.map(_run_forked_span, list(itertools.pairwise(bounds)))
    finally:
        _FORKED_WORK = None
    return [item for part in parts for item in part]


def sum_leaving_out(
    parties: int,
    count: int,
    workers: int,
    add: Callable[[list[int], int, int], list[tuple[Any, dict[int, str]]]],
) -> tuple[list[Any], dict[int, str]]:
    """Sums of ``count`` chunks over ``parties`` contributions, forked per span:
    ``add(included, start, stop)`` gives, per chunk, its sum over the ``included``
    parties (None if empty) and a reason for each party whose chunk could not be added.
    A party with any such chunk is left out and the sums are made again without it
    (its earlier chunks are in them); returns the sums and every left-out party's reason.
    """
    bad: dict[int, str] = {}
    while len(bad) < parties:
        included = [k for k in range(parties) if k not in bad]

        def work(start: int, stop: int, included: list[int] = included) -> list[Any]:
            return add(included, start, stop)

        results = map_spans_forked(work, count, workers)
        found = {k: reason for _, problems in results for k, reason in problems.items()}
        if not found:
            return [total for total, _ in results if total is not None], bad
        bad.update(found)
    return [], bad
