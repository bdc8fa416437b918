"""Cost of vertical learning: seconds and bytes per epoch against central training of
the same split model, and the accuracy gap.

For each setting, one ``family=vertical`` run on Flower's simulation engine (PSI
alignment, one Flower message exchange per mini-batch for the embeddings, one for the
label owner's step; gradients ride on the next batch's message), then the same model
trained in this process on the joined features with the same initialization, batches
and optimizer (``train_centrally``). Both in the same run, back to back.

With ``--polling`` each setting also runs with the simulation's messages polled for,
as before :mod:`fedpriv.runtime.flower_wakeup` (the engine every 0.1 s, the server
every 50 ms), and the table adds that epoch and the speed-up of wake-ups over it.

    python benchmarks/vertical.py [--epochs 3] [--only TEXT] [--polling] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

from fedpriv import load_config, run
from fedpriv.data.vertical import join, vertical_tables
from fedpriv.errors import DataError
from fedpriv.results import write_atomic
from fedpriv.runtime import simulation
from fedpriv.strategies.vertical.model import train_centrally
from fedpriv.strategies.vertical.settings import vertical_settings

SETTINGS: dict[str, list[str]] = {
    "breast_cancer, 3 parties, concat": ["data=breast_cancer", "vertical.parties=3"],
    "breast_cancer, 2 parties, sum + CKKS": [
        "data=breast_cancer",
        "strategy.merge=sum",
        "crypto=ckks",
    ],
    "digits, halves, absmax": [
        "data=digits",
        "vertical.split=halves",
        "strategy.merge=absmax",
        "train.batch_size=64",
    ],
    "fashion_mnist (10k), halves, sum + CKKS, cnn": [
        "data=fashion_mnist",
        "data.limit=10000",
        "model=cnn",
        "vertical.split=halves",
        "strategy.merge=sum",
        "crypto=ckks",
        "train.batch_size=128",
        "train.lr=0.05",
    ],
}


def polling() -> contextlib.AbstractContextManager[Any]:
    """The simulation without :mod:`fedpriv.runtime.flower_wakeup`: both sides poll."""
    return mock.patch.object(simulation, "wake_on_store", contextlib.nullcontext)


def measure(
    name: str, overrides: list[str], epochs: int, out_dir: Path, with_polling: bool
) -> dict[str, Any]:
    config = load_config(
        ["family=vertical", f"rounds={epochs}", f"output_dir={out_dir}", *overrides]
    )
    s = vertical_settings(config)
    dataset, tables = vertical_tables(
        config.data, s.parties, s.split, s.columns, s.overlap, config.seed
    )
    result = run(config)
    polled = None
    if with_polling:
        with polling():
            polled = run(config.replace(output_dir=str(out_dir) + "-polling"))
    alignment = json.loads((result.run_dir / "alignment.json").read_text())
    joined = join(tables)
    parts = (joined.train, joined.y_train, joined.test, joined.y_test, dataset.num_classes)
    train_centrally(config, *parts, epochs=1)  # warm-up: first-call costs of torch
    started = time.perf_counter()
    central = train_centrally(config, *parts, epochs=epochs)
    central_seconds = (time.perf_counter() - started) / epochs
    rounds = result.history
    seconds = statistics.median(r["seconds"] for r in rounds)
    polling_seconds = (
        statistics.median(r["seconds"] for r in polled.history) if polled is not None else None
    )
    per_party = [
        statistics.mean(r["clients"][p]["bytes_up"] + r["clients"][p]["bytes_down"] for r in rounds)
        for p in range(s.parties)
    ]
    return {
        "setting": name,
        "entities": alignment["train_entities"],
        "alignment_seconds": alignment["seconds"],
        "mask_seconds_max": max(alignment["party_mask_seconds"], default=0.0),
        "alignment_bytes": alignment["bytes"],
        "epoch_seconds": seconds,
        "central_epoch_seconds": central_seconds,
        "seconds_ratio": seconds / central_seconds,
        "polling_epoch_seconds": polling_seconds,
        "polling_seconds_ratio": None
        if polling_seconds is None
        else polling_seconds / central_seconds,
        "polling_accuracy": None if polled is None else polled.final["accuracy"],
        "epoch_bytes": statistics.mean(r["bytes_up"] + r["bytes_down"] for r in rounds),
        "epoch_bytes_per_party": per_party,
        "accuracy": result.final["accuracy"],
        "central_accuracy": central[-1]["accuracy"],
        "accuracy_gap": result.final["accuracy"] - central[-1]["accuracy"],
        "crypto": result.summary["crypto"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--only", help="run settings whose name contains this text")
    parser.add_argument("--polling", action="store_true", help="also run with polling")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(SETTINGS.items()):
            if args.only and args.only not in name:
                continue
            try:
                rows.append(measure(name, overrides, args.epochs, Path(tmp) / str(i), args.polling))
            except DataError as error:
                print(f"skipped {name}: {error}")
    print(
        f"\n{'setting':<46} {'entities':>8} {'align s':>7} {'mask s':>6} {'epoch s':>8} "
        f"{'central s':>9} {'ratio':>7} {'MB/epoch':>8} {'acc':>6} {'central':>7} {'gap':>6}"
    )
    for r in rows:
        print(
            f"{r['setting']:<46} {r['entities']:>8} {r['alignment_seconds']:>7.1f} "
            f"{r['mask_seconds_max']:>6.1f} "
            f"{r['epoch_seconds']:>8.2f} {r['central_epoch_seconds']:>9.3f} "
            f"{r['seconds_ratio']:>6.0f}× {r['epoch_bytes'] / 1e6:>8.2f} {r['accuracy']:>6.3f} "
            f"{r['central_accuracy']:>7.3f} {r['accuracy_gap']:>+6.3f}"
        )
    if args.polling:
        print(f"\n{'polling (before wake-ups)':<46} {'epoch s':>8} {'ratio':>7} {'speed-up':>8}")
        for r in rows:
            print(
                f"{r['setting']:<46} {r['polling_epoch_seconds']:>8.2f} "
                f"{r['polling_seconds_ratio']:>6.0f}× "
                f"{r['polling_epoch_seconds'] / r['epoch_seconds']:>7.1f}×"
            )
    if args.out:
        write_atomic(args.out, json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
