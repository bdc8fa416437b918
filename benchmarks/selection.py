"""Round time and accuracy of device-aware selection on an uneven simulated fleet.

``--clients`` simulated devices, the slowest ``--spread`` times slower than the fastest
(``selection.device_profiles=heterogeneous``), train the MLP on Fashion-MNIST (digits
when it is not installed). Three settings, same seed:

* ``uniform`` (the baseline): every round waits for the slowest device;
* ``uniform`` with a deadline: devices later than the deadline are dropped;
* ``resource_aware``: each device is asked for as many steps as fit the deadline.

The deadline is ``--deadline-fraction`` of the baseline's median round time (which the
slowest device sets). Printed: median round seconds, wall seconds, final accuracy, and
the ratios against the baseline.

    python benchmarks/selection.py [--clients 8] [--spread 4] [--rounds 10] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from fedpriv.api import run
from fedpriv.config import load_config
from fedpriv.data.datasets import available
from fedpriv.results import write_atomic


def simulate(common: list[str], extra: list[str], out: str) -> dict[str, Any]:
    result = run(load_config([*common, *extra, f"output_dir={out}"]))
    rounds = [record["seconds"] for record in result.history]
    return {
        "round_s_median": statistics.median(rounds),
        "wall_s": result.summary["seconds"],
        "accuracy": result.final["accuracy"],
        "stragglers": sum(len(r.get("stragglers", [])) for r in result.history),
        "history": [
            {
                "round": r["round"],
                "seconds": r["seconds"],
                "accuracy": r["accuracy"],
                "steps": {int(c["partition-id"]): c["steps"] for c in r["clients"]},
            }
            for r in result.history
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--spread", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--deadline-fraction", type=float, default=0.5)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args()
    data = (
        ["data=fashion_mnist", "data.limit=8000"] if available("fashion_mnist") else ["data=digits"]
    )
    common = [
        *data,
        "model=mlp",
        f"num_clients={args.clients}",
        f"rounds={args.rounds}",
        f"train.local_epochs={args.local_epochs}",
        "selection.device_profiles=heterogeneous",
        f"selection.speed_spread={args.spread}",
        f"engine.cpus_per_client={2 / args.clients}",  # every device on its own actor
        "engine.verbose=false",
    ]
    results: dict[str, Any] = {"data": data[0], **vars(args)}
    with tempfile.TemporaryDirectory(prefix="fedpriv-selection-") as tmp:
        baseline = simulate(common, [], f"{tmp}/uniform")
        deadline = args.deadline_fraction * baseline["round_s_median"]
        results["deadline_s"] = deadline
        results["uniform"] = baseline
        results["uniform_deadline"] = simulate(
            common, [f"selection.round_deadline_s={deadline:.3f}"], f"{tmp}/deadline"
        )
        results["resource_aware"] = simulate(
            common,
            [
                "selection=resource_aware",
                "selection.device_profiles=heterogeneous",
                f"selection.speed_spread={args.spread}",
                f"selection.round_deadline_s={deadline:.3f}",
            ],
            f"{tmp}/aware",
        )
    print(
        f"{args.clients} devices, {args.spread:g}x speed spread, {data[0]}, "
        f"deadline {deadline:.2f} s ({args.deadline_fraction:g} of uniform's median round)"
    )
    print(
        f"{'setting':18s} {'round s':>8s} {'ratio':>6s} {'wall s':>7s} {'accuracy':>9s} "
        f"{'Δacc':>6s} {'dropped':>7s}"
    )
    for name in ("uniform", "uniform_deadline", "resource_aware"):
        row = results[name]
        ratio = row["round_s_median"] / baseline["round_s_median"]
        row["round_ratio"] = ratio
        print(
            f"{name:18s} {row['round_s_median']:8.2f} {ratio:6.2f} {row['wall_s']:7.1f} "
            f"{row['accuracy']:9.4f} {row['accuracy'] - baseline['accuracy']:+6.3f} "
            f"{row['stragglers']:7d}"
        )
    if args.out:
        write_atomic(Path(args.out), json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
