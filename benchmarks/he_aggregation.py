"""Cost of CKKS aggregation: client encryption, ciphertext size, server sum, error.

For each preset and model size, ``--clients`` clients pre-weight their float32 update by
their example count and encrypt it (fedpriv's ``ckks.encrypt``: one process, then a
pool of ``--workers``); the server deserializes and sums the ciphertexts with the public
context (``ckks.add``, the same pool size); a key holder decrypts and divides. The
baseline, timed in the same run on the same vectors, is numpy's weighted sum of the
plaintext updates as a server accumulates them (``total += n_k * x_k``); a single BLAS
call (``weights @ updates``) is shown as the floor. The error is measured against a
float64 weighted mean.

    python benchmarks/he_aggregation.py [--sizes 100000 1000000 10000000] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from fedpriv.crypto import PRESETS, CkksParams, ckks, make_keys
from fedpriv.crypto.parallel import default_workers
from fedpriv.results import write_atomic

T = TypeVar("T")


def timed(function: Callable[..., T], *args: Any) -> tuple[T, float]:
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def weighted_sum(weights: np.ndarray, updates: np.ndarray) -> np.ndarray:
    """The plaintext server's work: accumulate n_k·x_k, one client at a time."""
    total = np.zeros(updates.shape[1], np.float32)
    for weight, update in zip(weights, updates, strict=True):
        total += weight * update
    return total


def measure(preset: str, size: int, clients: int, workers: int) -> dict[str, Any]:
    p = PRESETS[preset]
    params = CkksParams(p.poly_modulus_degree, p.coeff_mod_bit_sizes, p.scale_bits)
    keys = make_keys(params)
    rng = np.random.default_rng(size)
    updates = rng.normal(0.0, 0.1, (clients, size)).astype(np.float32)
    counts = rng.integers(100, 6000, clients).astype(np.float64)
    weighted = [n * u.astype(np.float64) for n, u in zip(counts, updates, strict=True)]

    # Client side: one process, then the pool, on client 0's update.
    _, one_s = timed(ckks.encrypt, keys.secret, params, weighted[0], 1)
    chunks, pool_s = timed(ckks.encrypt, keys.secret, params, weighted[0], workers)
    contributions = [chunks] + [ckks.encrypt(keys.secret, params, w, workers) for w in weighted[1:]]
    sizes = [min(params.slots, size - i) for i in range(0, size, params.slots)]

    # Server side: deserialize + sum, against numpy's weighted sum of the plaintext.
    (sums, bad), add_s = timed(ckks.add, keys.public, params, contributions, sizes, workers)
    assert not bad, bad
    weights = counts.astype(np.float32)
    numpy_s = min(timed(weighted_sum, weights, updates)[1] for _ in range(5))
    blas_s = min(timed(np.dot, weights, updates)[1] for _ in range(5))

    # Key holder: decrypt, divide; error against the float64 weighted mean.
    total, decrypt_s = timed(ckks.decrypt, keys.secret, params, sums, workers)
    exact = np.average(updates.astype(np.float64), axis=0, weights=counts)
    ciphertext_bytes = sum(len(c) for c in chunks)
    return {
        "preset": preset,
        "params": size,
        "clients": clients,
        "workers": workers,
        "encrypt_params_per_s_1_process": size / one_s,
        "encrypt_params_per_s_pool": size / pool_s,
        "expansion": ciphertext_bytes / (4 * size),
        "aggregate_s": add_s,
        "numpy_weighted_sum_s": numpy_s,
        "aggregate_over_numpy": add_s / numpy_s,
        "numpy_blas_s": blas_s,
        "aggregate_over_blas": add_s / blas_s,
        "decrypt_s": decrypt_s,
        "max_abs_error": float(np.abs(total / counts.sum() - exact).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument(
        "--largest-for-others",
        type=int,
        default=1_000_000,
        help="sizes above this run only for the first preset (the others are slower)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    print(f"{args.clients} clients, {args.workers} worker processes; ratio = fedpriv / numpy")
    print(f"{'preset':15} {'params':>9} {'enc M/s 1p':>10} {'enc M/s':>8} {'expand':>7} "
          f"{'agg s':>7} {'numpy s':>8} {'agg ×':>7} {'× blas':>7} {'dec s':>6} "
          f"{'max err':>8}")  # fmt: skip
    rows = []
    for preset in args.presets:
        for size in args.sizes:
            if preset != args.presets[0] and size > args.largest_for_others:
                continue
            row = measure(preset, size, args.clients, args.workers)
            rows.append(row)
            print(f"{preset:15} {size:9d} {row['encrypt_params_per_s_1_process'] / 1e6:10.2f} "
                  f"{row['encrypt_params_per_s_pool'] / 1e6:8.2f} {row['expansion']:7.2f} "
                  f"{row['aggregate_s']:7.3f} {row['numpy_weighted_sum_s']:8.4f} "
                  f"{row['aggregate_over_numpy']:7.1f} {row['aggregate_over_blas']:7.0f} "
                  f"{row['decrypt_s']:6.2f} "
                  f"{row['max_abs_error']:8.1e}", flush=True)  # fmt: skip
    if args.out:
        write_atomic(args.out, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
