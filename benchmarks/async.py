"""Accuracy against wall-clock time: FedAvg vs FedAsync vs FedBuff on an uneven fleet.

``--clients`` simulated devices, the slowest ``--spread`` times slower than the fastest
(``selection.device_profiles=heterogeneous``; one run per spread), each on its own
simulation actor, train the MLP on Fashion-MNIST (digits when it is not installed).

The baseline is synchronous FedAvg for ``--rounds`` rounds: its wall time T (training,
after every node started) and final accuracy A. FedAsync and FedBuff then run for the
same wall time (``time_budget_s=T``). Printed per spread: each strategy's final
accuracy, the time it first reached A as a ratio of T (the target for FedBuff at 10x
spread: at most 0.6), and the time from which it stayed at or above A. ``--plot``
draws accuracy against seconds and against updates applied.

    python benchmarks/async.py [--clients 8] [--spreads 4 10] [--rounds 8]
        [--out F.json] [--plot F.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from fedpriv.api import run
from fedpriv.config import load_config
from fedpriv.data.datasets import available
from fedpriv.results import write_atomic

STRATEGIES = {
    "fedasync": ["strategy=fedasync", "strategy.staleness=polynomial", "strategy.alpha=0.6"],
    "fedbuff": ["strategy=fedbuff", "strategy.buffer_size=3"],
}


def curve(common: list[str], extra: list[str], out: str) -> dict[str, Any]:
    """One run's accuracy after each evaluation, against seconds and updates applied."""
    result = run(load_config([*common, *extra, f"output_dir={out}"]))
    points, updates = [], 0
    for record in result.history:
        updates = record.get("updates", updates + len(record["clients"]))
        points.append(
            {"seconds": record["elapsed"], "updates": updates, "accuracy": record["accuracy"]}
        )
    return {"accuracy": result.final["accuracy"], "points": points}


def time_to_reach(points: list[dict[str, float]], accuracy: float) -> float | None:
    """Seconds until the first evaluation at or above ``accuracy`` (None: never)."""
    return next((p["seconds"] for p in points if p["accuracy"] >= accuracy), None)


def time_to_stay(points: list[dict[str, float]], accuracy: float) -> float | None:
    """Seconds from which every evaluation is at or above ``accuracy`` (None: never)."""
    held = None
    for point in reversed(points):
        if point["accuracy"] < accuracy:
            break
        held = point["seconds"]
    return held


def compare(
    common: list[str], clients: int, spread: float, rounds: int, tmp: str
) -> dict[str, Any]:
    fleet = [*common, f"selection.speed_spread={spread}"]
    baseline = curve(fleet, [f"rounds={rounds}"], f"{tmp}/fedavg-{spread:g}")
    wall = baseline["points"][-1]["seconds"]
    row: dict[str, Any] = {"fedavg": {**baseline, "wall_s": wall, "time_ratio": 1.0}}
    for name, extra in STRATEGIES.items():
        # rounds is only a ceiling here: the time budget ends the run.
        budget = [
            *extra,
            "rounds=1000",
            f"time_budget_s={wall:.3f}",
            f"strategy.updates_per_round={clients // 2}",  # two evaluations per FedAvg round
        ]
        run_ = curve(fleet, budget, f"{tmp}/{name}-{spread:g}")
        reached = time_to_reach(run_["points"], baseline["accuracy"])
        held = time_to_stay(run_["points"], baseline["accuracy"])
        row[name] = {
            **run_,
            "reached_s": reached,
            "time_ratio": reached and reached / wall,
            "stays_s": held,
        }
    return row


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spreads = results["spreads"]
    fig, axes = plt.subplots(2, len(spreads), figsize=(5 * len(spreads), 7), squeeze=False)
    for column, spread in enumerate(spreads):
        row = results["by_spread"][str(spread)]
        for name in ("fedavg", *STRATEGIES):
            points = row[name]["points"]
            for axis, key in zip(axes[:, column], ("seconds", "updates"), strict=True):
                axis.plot([p[key] for p in points], [p["accuracy"] for p in points], label=name)
        top, bottom = axes[0, column], axes[1, column]
        top.axhline(row["fedavg"]["accuracy"], color="grey", linestyle=":", linewidth=1)
        top.set(title=f"{spread:g}x speed spread", xlabel="wall-clock seconds")
        bottom.set(xlabel="client updates applied")
        for axis in (top, bottom):
            axis.set_ylabel("test accuracy")
            axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--spreads", type=float, nargs="+", default=[4.0, 10.0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--out", help="write the numbers as JSON here")
    parser.add_argument("--plot", help="write the accuracy curves as a PNG here")
    args = parser.parse_args()
    fashion = available("fashion_mnist")
    data = ["data=fashion_mnist", "data.limit=8000"] if fashion else ["data=digits"]
    common = [
        *data,
        "model=mlp",
        f"num_clients={args.clients}",
        f"train.local_epochs={args.local_epochs}",
        "selection.device_profiles=heterogeneous",
        f"engine.cpus_per_client={2 / args.clients}",  # every device on its own actor
        "engine.num_cpus=2",
    ]
    results: dict[str, Any] = {"data": data[0], **vars(args), "by_spread": {}}
    with tempfile.TemporaryDirectory(prefix="fedpriv-async-") as tmp:
        for spread in args.spreads:
            results["by_spread"][str(spread)] = compare(
                common, args.clients, spread, args.rounds, tmp
            )
    print(f"{args.clients} devices, {data[0]}, FedAvg for {args.rounds} rounds as the baseline")
    print(
        f"{'spread':>6s} {'strategy':9s} {'accuracy':>9s} {'reached A at':>13s} "
        f"{'÷ FedAvg T':>11s} {'stays ≥ A from':>15s}"
    )
    for spread in args.spreads:
        row = results["by_spread"][str(spread)]
        for name in ("fedavg", *STRATEGIES):
            entry = row[name]
            reached = row["fedavg"]["wall_s"] if name == "fedavg" else entry["reached_s"]
            ratio, held = entry["time_ratio"], entry.get("stays_s")
            print(
                f"{spread:6g} {name:9s} {entry['accuracy']:9.4f} "
                f"{'never' if reached is None else f'{reached:.1f} s':>13s} "
                f"{'-' if ratio is None else f'{ratio:.2f}':>11s} "
                f"{'-' if held is None else f'{held:.1f} s':>15s}"
            )
    if args.out:
        write_atomic(Path(args.out), json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot(results, Path(args.plot))


if __name__ == "__main__":
    main()
