"""Cost of DP-SGD: seconds per local epoch, private / non-private, per model and batch size.

Both paths are fedpriv's own: ``train_local`` (plain SGD) and ``train_dp_sgd`` (Opacus,
Poisson sampling, per-sample clipping, noise), one torch thread as on a client, timed
back to back in the same process (median of ``--repeats``). The ratio is what a client
pays for privacy. A DP step must at least compute per-sample gradient norms (about one
extra backward pass), so ~1.5× is near the floor. ``secure`` is the default path with
``privacy.secure_mode`` (noise from ChaCha20, four draws per value, as Opacus' secure
mode), against the same default path with torch's generator.

    python benchmarks/dp_overhead.py [--samples 4096] [--repeats 3] [--out FILE.json]
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
    model_params: dict, data: Dataset, batch: int, mode: str | None, secure: bool = False
) -> float:
    torch.manual_seed(0)
    model = MODELS.create(model_params).build(data.input_shape, data.num_classes)
    train = TrainConfig(local_epochs=1, batch_size=batch, lr=0.05)
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
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_images(args.samples)
    print(f"data: {data.name}, {len(data.y_train)} samples per epoch, 1 torch thread")
    print(f"{'model':7} {'params':>8} {'batch':>5} {'plain s':>8} {'hooks s':>8} {'ghost s':>8} "
          f"{'hooks ×':>8} {'ghost ×':>8} {'secure ×':>8}  default")  # fmt: skip
    rows = []
    for mode in (None, "hooks", "ghost"):  # warm-up: first calls pay one-off imports and caches
        epoch_seconds(MODELS_TIMED["logreg"], data, 64, mode)
    for name in args.models:
        probe = MODELS.create(MODELS_TIMED[name]).build(data.input_shape, data.num_classes)
        params = sum(p.numel() for p in probe.parameters())
        default = grad_sample_mode(probe, "auto")
        for batch in args.batches:
            times: dict[str, list[float]] = {"plain": [], "hooks": [], "ghost": [], "secure": []}
            paths = (("plain", None, False), ("hooks", "hooks", False), ("ghost", "ghost", False),
                     ("secure", default, True))  # fmt: skip
            for _ in range(args.repeats):  # interleaved, so drift hits every path alike
                for label, mode, secure in paths:
                    times[label].append(
                        epoch_seconds(MODELS_TIMED[name], data, batch, mode, secure)
                    )
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"model": name, "params": params, "batch": batch, "default_mode": default,
                   **{f"{k}_s": v for k, v in med.items()},
                   "hooks_ratio": med["hooks"] / med["plain"],
                   "ghost_ratio": med["ghost"] / med["plain"],
                   "secure_ratio": med["secure"] / med[default]}  # fmt: skip
            rows.append(row)
            print(f"{name:7} {params:8d} {batch:5d} {med['plain']:8.3f} {med['hooks']:8.3f} "
                  f"{med['ghost']:8.3f} {row['hooks_ratio']:8.2f} {row['ghost_ratio']:8.2f} "
                  f"{row['secure_ratio']:8.2f}  {default}")  # fmt: skip
    if args.out:
        write_atomic(args.out, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
