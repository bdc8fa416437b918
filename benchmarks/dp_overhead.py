"""Cost of DP-SGD: seconds per local epoch, private / non-private, per model and batch size.

Both paths are fedpriv's own: ``train_local`` (plain SGD) and ``train_dp_sgd`` (Opacus,
Poisson sampling, per-sample clipping, noise), one torch thread as on a client, timed
back to back in the same process (median of ``--repeats``). The ratio is what a client
pays for privacy. A DP step must at least compute per-sample gradient norms (about one
extra backward pass) with Opacus' ghost clipping; book-keeping clipping
(``grad_sample_mode=bookkeeping``, the default for every fedpriv model) needs no second
backward pass, so its floor is the norms, one matmul per layer and the noise.
``secure`` is the default path with ``privacy.secure_mode`` (noise from ChaCha20, four
draws per value, as Opacus' secure mode), against the same default path with torch's
generator.

    python benchmarks/dp_overhead.py [--samples 4096] [--repeats 3] [--modes ghost ...]
                                     [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedpriv.data import DATASETS, Dataset
from fedpriv.errors import DataError
from fedpriv.models import MODELS
from fedpriv.privacy import DpSgd, grad_sample_mode, train_dp_sgd
from fedpriv.results import write_atomic
from fedpriv.training import TrainConfig, train_local

#: Private paths timed: Opacus' hooks and ghost clipping, fedpriv's book-keeping clipping,
#: and ``secure`` (the default mode with privacy.secure_mode, against the default).
MODES = ("hooks", "ghost", "bookkeeping", "secure")

MODELS_TIMED: dict[str, dict[str, Any]] = {
    "logreg": {"name": "logreg"},
    "mlp": {"name": "mlp", "hidden": [128]},
    "cnn": {"name": "cnn"},
}


def load_images(samples: int) -> Dataset:
    """Fashion-MNIST when its files are installed, else digits upscaled to 28×28."""
    try:
        return DATASETS.create({"name": "fashion_mnist", "limit": samples}).load(seed=0)
    except DataError:
        digits = DATASETS.create({"name": "digits"}).load(seed=0)
        x = np.kron(digits.x_train, np.ones((1, 1, 4, 4), np.float32))[:, :, 2:30, 2:30]
        x = np.pad(x, ((0, 0), (0, 0), (0, 28 - x.shape[2]), (0, 28 - x.shape[3])))
        reps = -(-samples // len(x))
        return Dataset("digits-28x28", np.tile(x, (reps, 1, 1, 1))[:samples],
                       np.tile(digits.y_train, reps)[:samples], x[:1], digits.y_train[:1],
                       10, (1, 28, 28))  # fmt: skip


def epoch_seconds(
    model_params: dict,
    data: Dataset,
    batch: int,
    mode: str | None,
    secure: bool = False,
    device: str = "cpu",
) -> float:
    """One epoch's seconds: plain SGD (``mode`` None) or DP-SGD in ``mode``, on ``device``
    (the model is back on the CPU when it returns: all its work is done)."""
    torch.manual_seed(0)
    model = MODELS.create(model_params).build(data.input_shape, data.num_classes)
    train = TrainConfig(local_epochs=1, batch_size=batch, lr=0.05, device=device)
    start = time.perf_counter()
    if mode is None:
        train_local(model, data.x_train, data.y_train, train, seed=0)
    else:
        dp = DpSgd(noise_multiplier=1.0, grad_sample_mode=mode, secure_mode=secure)
        train_dp_sgd(model, data.x_train, data.y_train, train, dp, seed=0, planned_steps=1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--models", nargs="+", default=list(MODELS_TIMED))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_images(args.samples)
    print(f"data: {data.name}, {len(data.y_train)} samples per epoch, 1 torch thread")
    print(f"{'model':7} {'params':>8} {'batch':>5} {'plain s':>8} "
          + " ".join(f"{m[:5] + ' s':>8}" for m in args.modes) + " "
          + " ".join(f"{m[:5] + ' ×':>8}" for m in args.modes) + "  default")  # fmt: skip
    rows = []
    for mode in (None, *args.modes):  # warm-up: first calls pay one-off imports and caches
        epoch_seconds(MODELS_TIMED["logreg"], data, 64, mode if mode != "secure" else None)
    for name in args.models:
        probe = MODELS.create(MODELS_TIMED[name]).build(data.input_shape, data.num_classes)
        params = sum(p.numel() for p in probe.parameters())
        default = grad_sample_mode(probe, "auto")
        for batch in args.batches:
            times: dict[str, list[float]] = {"plain": []} | {m: [] for m in args.modes}
            paths = [("plain", None, False)] + [
                (m, default, True) if m == "secure" else (m, m, False) for m in args.modes
            ]
            for _ in range(args.repeats):  # interleaved, so drift hits every path alike
                for label, mode, secure in paths:
                    times[label].append(
                        epoch_seconds(MODELS_TIMED[name], data, batch, mode, secure)
                    )
            med = {k: statistics.median(v) for k, v in times.items()}
            # every ratio against the non-private epoch of this run; secure against default
            ratios = {f"{m}_ratio": med[m] / med["plain"] for m in args.modes if m != "secure"}
            if "secure" in args.modes:
                ratios["secure_ratio"] = med["secure"] / med.get(default, float("nan"))
            row = {"model": name, "params": params, "batch": batch, "default_mode": default,
                   **{f"{k}_s": v for k, v in med.items()}, **ratios}  # fmt: skip
            rows.append(row)
            seconds = " ".join(f"{med[m]:8.3f}" for m in args.modes)
            times_plain = " ".join(f"{row[m + '_ratio']:8.2f}" for m in args.modes)
            print(f"{name:7} {params:8d} {batch:5d} {med['plain']:8.3f} {seconds} {times_plain}"
                  f"  {default}")  # fmt: skip
    if args.out:
        write_atomic(args.out, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
