"""Seconds per local epoch on a CUDA GPU against the CPU (``train.device``), plain SGD
and DP-SGD (the default clipping mode), per model and batch size, back to back in the
same process (median of ``--repeats``). The CPU runs as a client does (``--cpu-threads``,
1 by default, as a simulated client; a device's cores with 0). Without a GPU it prints
that and exits 0: the ratio needs both devices in one run.

    python benchmarks/device_training.py [--samples 8192] [--repeats 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import dp_overhead
import torch
from dp_overhead import MODELS_TIMED, load_images

from fedpriv.data import Dataset
from fedpriv.results import write_atomic


def epoch_seconds(model_name: str, data: Dataset, batch: int, private: bool, device: str) -> float:
    """dp_overhead's epoch, on ``device``: DP-SGD in the default clipping mode, or plain."""
    mode = "auto" if private else None
    return dp_overhead.epoch_seconds(MODELS_TIMED[model_name], data, batch, mode, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--cpu-threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"no CUDA GPU visible to torch {torch.__version__}: nothing to compare")
        return
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    data = load_images(args.samples)
    gpu = torch.cuda.get_device_name()
    print(f"data: {data.name}, {len(data.y_train)} samples per epoch; CPU: "
          f"{torch.get_num_threads()} torch threads; GPU: {gpu}")  # fmt: skip
    print(f"{'model':6} {'batch':>5} {'path':7} {'cpu s':>8} {'gpu s':>8} {'gpu/cpu':>8}")
    for private in (False, True):  # warm-up: CUDA's context, cuDNN's plans, Opacus' imports
        for device in ("cpu", "cuda"):
            epoch_seconds("cnn", data, 64, private, device)
    rows = []
    for name in args.models:
        for batch in args.batches:
            for private in (False, True):
                times: dict[str, list[float]] = {"cpu": [], "cuda": []}
                for _ in range(args.repeats):  # interleaved, so drift hits both alike
                    for device in times:
                        times[device].append(epoch_seconds(name, data, batch, private, device))
                med = {k: statistics.median(v) for k, v in times.items()}
                path = "dp_sgd" if private else "plain"
                row = {"model": name, "batch": batch, "path": path, "cpu_s": med["cpu"],
                       "gpu_s": med["cuda"], "gpu_over_cpu": med["cuda"] / med["cpu"]}  # fmt: skip
                rows.append(row)
                print(f"{name:6} {batch:5d} {path:7} {med['cpu']:8.3f} {med['cuda']:8.3f} "
                      f"{row['gpu_over_cpu']:8.3f}")  # fmt: skip
    if args.out:
        write_atomic(args.out, json.dumps({"gpu": gpu, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
