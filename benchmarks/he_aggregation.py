"""Cost of CKKS aggregation: client encryption, ciphertext size, server sum, error.

``--clients`` clients pre-weight their float32 update by their example count and
encrypt it (one process, then a pool of ``--workers``); the server deserializes and
sums the ciphertexts with its key-less context (the same pool size); a key holder
decrypts and divides. Four ways, in the same run on the same vectors:

* ``tenseal n8192``: TenSEAL vectors, N=8192 [60, 40, 40, 60] (the common setting),
* ``tenseal``: TenSEAL vectors, the ``ckks-128`` preset (fedpriv's path before the
  packed format: one value per slot),
* ``packed``: two values per slot in SEAL's format (:mod:`fedpriv.crypto.packed`),
  both polynomials saved (``crypto.seeded=false``),
* ``packed seeded``: the same with the random polynomial saved as its seed (the default).

The baseline is numpy's weighted sum of the plaintext updates as a server accumulates
them (``total += n_k * x_k``); a single BLAS call (``weights @ updates``) is the floor.
The error is measured against a float64 weighted mean. ``--profile`` shows where one
process spends the server sum (cProfile).

Wall-clock speeds move with whatever else the machine runs, so the one-process
encryption, a one-process server sum and numpy's sum are also timed in CPU seconds of
this process (``time.process_time``): their ratios hold on a shared machine.

    python benchmarks/he_aggregation.py            # 10 clients x 1 M parameters
    python benchmarks/he_aggregation.py --large    # and 10 clients x 10 M
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import pstats
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from fedpriv.crypto import PRESETS, CkksParams, ckks, make_keys, packed
from fedpriv.crypto.parallel import default_workers
from fedpriv.results import write_atomic

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Way:
    """One way to encrypt and sum: a preset and a ciphertext format."""

    name: str
    preset: str
    packed: bool
    seeded: bool = False

    @property
    def params(self) -> CkksParams:
        p = PRESETS[self.preset]
        return CkksParams(p.poly_modulus_degree, p.coeff_mod_bit_sizes, p.scale_bits)

    def per_ciphertext(self) -> int:
        return self.params.packed_values if self.packed else self.params.slots

    def encrypt(self, secret: bytes, values: np.ndarray, workers: int) -> list[bytes]:
        if self.packed:
            return packed.encrypt(secret, self.params, values, workers, seeded=self.seeded)
        return ckks.encrypt(secret, self.params, values, workers)

    def add(
        self, public: bytes, contributions: list[list[bytes]], sizes: list[int], workers: int
    ) -> tuple[list[bytes], dict[int, str]]:
        if self.packed:
            return packed.add(public, self.params, contributions, len(sizes), workers)
        return ckks.add(public, self.params, contributions, sizes, workers)

    def decrypt(
        self, secret: bytes, sums: list[bytes], sizes: list[int], workers: int
    ) -> np.ndarray:
        if self.packed:
            return packed.decrypt(secret, self.params, sums, sizes, workers)
        return ckks.decrypt(secret, self.params, sums, workers)


WAYS = {
    "tenseal-n8192": Way("tenseal n8192", "ckks-128-n8192", packed=False),
    "tenseal": Way("tenseal", "ckks-128", packed=False),
    "packed": Way("packed", "ckks-128", packed=True, seeded=False),
    "packed-seeded": Way("packed seeded", "ckks-128", packed=True, seeded=True),
}
#: What the others are compared with: the common setting and fedpriv's previous default.
REFERENCES = ("tenseal-n8192", "tenseal")


def timed(function: Callable[..., T], *args: Any) -> tuple[T, float]:
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def cpu_timed(function: Callable[..., T], *args: Any) -> tuple[T, float]:
    """Like :func:`timed`, in CPU seconds of this process (work done in this process only)."""
    started = time.process_time()
    result = function(*args)
    return result, time.process_time() - started


def weighted_sum(weights: np.ndarray, updates: np.ndarray) -> np.ndarray:
    """The plaintext server's work: accumulate n_k·x_k, one client at a time."""
    total = np.zeros(updates.shape[1], np.float32)
    for weight, update in zip(weights, updates, strict=True):
        total += weight * update
    return total


def profile_sum(
    way: Way, public: bytes, contributions: list[list[bytes]], sizes: list[int]
) -> None:
    """The server sum in this process under cProfile: the top entries by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    way.add(public, contributions, sizes, 1)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:4]  # type: ignore[attr-defined]
    print(f"  profile of the server sum ({way.name}, one process, {total:.2f} s):")
    for (_, _, function), (_, calls, own, *_) in rows:
        print(f"    {100 * own / total:5.1f} %  {calls:7d} calls  {function}")


def measure(
    way: Way, size: int, clients: int, workers: int, profile: bool, baseline: dict[str, float]
) -> dict[str, Any]:
    params = way.params
    keys = make_keys(params)
    rng = np.random.default_rng(size)
    updates = rng.normal(0.0, 0.1, (clients, size)).astype(np.float32)
    counts = rng.integers(100, 6000, clients).astype(np.float64)

    def weighted(k: int) -> np.ndarray:
        return counts[k] * updates[k].astype(np.float64)

    # Client side: one process, then the pool, on client 0's update.
    _, one_s = timed(way.encrypt, keys.secret, weighted(0), 1)
    _, one_cpu = cpu_timed(way.encrypt, keys.secret, weighted(0), 1)
    chunks, pool_s = timed(way.encrypt, keys.secret, weighted(0), workers)
    contributions = [chunks] + [
        way.encrypt(keys.secret, weighted(k), workers) for k in range(1, clients)
    ]
    per = way.per_ciphertext()
    sizes = [min(per, size - i) for i in range(0, size, per)]

    # Server side: deserialize + sum, against numpy's weighted sum of the plaintext.
    (sums, bad), add_s = timed(way.add, keys.public, contributions, sizes, workers)
    assert not bad, bad
    if profile:
        profile_sum(way, keys.public, contributions, sizes)
    _, add_cpu = cpu_timed(way.add, keys.public, contributions, sizes, 1)
    weights = counts.astype(np.float32)
    if "numpy" not in baseline:  # the same vectors for every way: time them once
        baseline["numpy"] = min(timed(weighted_sum, weights, updates)[1] for _ in range(5))
        baseline["blas"] = min(timed(np.dot, weights, updates)[1] for _ in range(5))
        baseline["numpy_cpu"] = min(cpu_timed(weighted_sum, weights, updates)[1] for _ in range(5))

    # Key holder: decrypt, divide; error against the float64 weighted mean.
    total, decrypt_s = timed(way.decrypt, keys.secret, sums, sizes, workers)
    exact = np.average(updates.astype(np.float64), axis=0, weights=counts)
    ciphertext_bytes = sum(len(c) for c in chunks)
    return {
        "way": way.name,
        "preset": way.preset,
        "seeded": way.seeded,
        "params": size,
        "clients": clients,
        "workers": workers,
        "encrypt_params_per_s_1_process": size / one_s,
        "encrypt_params_per_s_pool": size / pool_s,
        "expansion": ciphertext_bytes / (4 * size),
        "aggregate_s": add_s,
        "numpy_weighted_sum_s": baseline["numpy"],
        "aggregate_over_numpy": add_s / baseline["numpy"],
        "numpy_blas_s": baseline["blas"],
        "aggregate_over_blas": add_s / baseline["blas"],
        "decrypt_s": decrypt_s,
        "encrypt_params_per_cpu_s": size / one_cpu,
        "aggregate_cpu_s_1_process": add_cpu,
        "numpy_weighted_sum_cpu_s": baseline["numpy_cpu"],
        "aggregate_cpu_over_numpy_cpu": add_cpu / baseline["numpy_cpu"],
        "max_abs_error": float(np.abs(total / counts.sum() - exact).max()),
    }


def print_row(row: dict[str, Any]) -> None:
    print(f"{row['way']:14} {row['params']:9d} {row['encrypt_params_per_s_1_process'] / 1e6:10.2f} "
          f"{row['encrypt_params_per_s_pool'] / 1e6:8.2f} {row['expansion']:7.2f} "
          f"{row['aggregate_s']:7.3f} {row['numpy_weighted_sum_s']:8.4f} "
          f"{row['aggregate_over_numpy']:7.1f} {row['aggregate_over_blas']:7.0f} "
          f"{row['decrypt_s']:6.2f} {row['max_abs_error']:8.1e} "
          f"{row['encrypt_params_per_cpu_s'] / 1e6:9.2f} "
          f"{row['aggregate_cpu_over_numpy_cpu']:8.1f}",
          flush=True)  # fmt: skip


def print_ratios(rows: Sequence[dict[str, Any]]) -> None:
    """Each way against the references measured in this run, at the same size."""
    print("\nagainst the references (same size): bytes and server time as a fraction of the")
    print("reference's (lower is better), encryption speed as a multiple (higher is better)")
    for reference in (WAYS[name].name for name in REFERENCES):
        for row in rows:
            base = next(
                (r for r in rows if r["way"] == reference and r["params"] == row["params"]), None
            )
            if base is None or row is base:
                continue
            print(f"  {row['way']:14} vs {reference:14} {row['params']:9d}: bytes "
                  f"{row['expansion'] / base['expansion']:5.2f}x, server sum "
                  f"{row['aggregate_s'] / base['aggregate_s']:5.2f}x, encryption "
                  f"{row['encrypt_params_per_s_pool'] / base['encrypt_params_per_s_pool']:5.2f}x "
                  f"(pool); CPU seconds: server sum "
                  f"{row['aggregate_cpu_s_1_process'] / base['aggregate_cpu_s_1_process']:5.2f}x, "
                  "encryption "
                  f"{row['encrypt_params_per_cpu_s'] / base['encrypt_params_per_cpu_s']:5.2f}x"
                  )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument(
        "--large", action="store_true", help="10 M parameters too (--sizes 1000000 10000000)"
    )
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    parser.add_argument(
        "--largest-n8192",
        type=int,
        default=1_000_000,
        help="larger sizes skip tenseal-n8192 (20x float32: 10 x 10 M would hold 8 GB of "
        "ciphertext)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile each server sum")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sizes = [1_000_000, 10_000_000] if args.large else args.sizes
    print(f"{args.clients} clients, {args.workers} worker processes; ratio = fedpriv / numpy")
    print(f"{'way':14} {'params':>9} {'enc M/s 1p':>10} {'enc M/s':>8} {'expand':>7} "
          f"{'agg s':>7} {'numpy s':>8} {'agg ×':>7} {'× blas':>7} {'dec s':>6} "
          f"{'max err':>8} {'enc M/cpu':>9} {'cpu agg×':>8}")  # fmt: skip
    rows: list[dict[str, Any]] = []
    baselines: dict[int, dict[str, float]] = {}
    for size in sizes:
        for name in args.ways:
            if name == "tenseal-n8192" and size > args.largest_n8192:
                continue
            baseline = baselines.setdefault(size, {})
            row = measure(WAYS[name], size, args.clients, args.workers, args.profile, baseline)
            rows.append(row)
            print_row(row)
            if args.out:  # after every row: a long run interrupted keeps what it measured
                write_atomic(args.out, json.dumps(rows, indent=2) + "\n")
    print_ratios(rows)


if __name__ == "__main__":
    main()
