"""What a real fleet costs per message, and what a device needs in memory.

A local fleet (``flower-superlink`` and ``--nodes`` ``flower-supernode`` processes on
127.0.0.1, TLS and registered node keys) runs the same small FedAvg experiment twice:
with Flower's default isolation (a fresh ``flwr-clientapp`` process per message, the
baseline) and with fedpriv's warm executor (each message runs in a fork of a process
that already imported torch). Per-message overhead is a round's wall time minus the
slowest client's own work (``work-seconds``: training and the reply's preparation,
measured on the device); plaintext, so one message exchange per round.

Then one client trains the CNN on Fashion-MNIST (digits if it is not installed) with
DP-SGD and capped physical batches on the warm fleet; its device telemetry gives the
peak RSS. Targets (issue 7): overhead <= 0.5 s, peak RSS < 800 MB.

    python benchmarks/deployment.py [--rounds 4] [--nodes 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fedpriv.api import run
from fedpriv.config import load_config
from fedpriv.data.datasets import available
from fedpriv.deployment import LocalFleet
from fedpriv.results import write_atomic

OVERHEAD_TARGET_S, RSS_TARGET_MB = 0.5, 800.0
SMALL = ["data=digits", "model=logreg", "strategy=fedavg", "engine.torch_threads=1"]


def overheads(history: list[dict[str, Any]]) -> list[float]:
    """Per round: wall seconds minus the slowest replying client's own work."""
    return [
        record["seconds"] - max(client["work-seconds"] for client in record["clients"])
        for record in history
        if record["clients"]
    ]


def fleet_run(nodes: int, rounds: int, warm: bool, extra: list[str]) -> list[dict[str, Any]]:
    with (
        tempfile.TemporaryDirectory(prefix="fedpriv-bench-") as tmp,
        LocalFleet(Path(tmp), nodes=nodes, warm=warm) as fleet,
    ):
        config = load_config(
            [
                *SMALL,
                f"num_clients={nodes}",
                f"rounds={rounds}",
                *extra,
                *fleet.engine_overrides(),
                f"output_dir={tmp}/run",
            ]
        )
        return run(config).history


def memory_run() -> dict[str, Any]:
    """Peak RSS of a device training the CNN with DP-SGD (physical batches capped)."""
    fashion = available("fashion_mnist")
    data = ["data=fashion_mnist", "data.limit=12000"] if fashion else ["data=digits"]
    extra = [
        *data,
        "model=cnn",
        "privacy=dp_sgd",
        "privacy.max_physical_batch_size=32",
        "train.batch_size=64",
        "engine.torch_threads=2",
    ]
    history = fleet_run(1, 1, True, extra)
    client = history[0]["clients"][0]
    return {
        "dataset": "fashion_mnist" if fashion else "digits",
        "peak_rss_mb": client["peak-rss-mb"],
        "rss_mb": client["rss-mb"],
        "train_seconds": client["train-seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args()
    results: dict[str, Any] = {"rounds": args.rounds, "nodes": args.nodes}
    for name, warm in (("flower_default", False), ("warm_executor", True)):
        started = time.perf_counter()
        history = fleet_run(args.nodes, args.rounds, warm, [])
        per_round = overheads(history)
        results[name] = {
            "overhead_s": per_round,
            "overhead_median_s": statistics.median(per_round),
            "round_s": [record["seconds"] for record in history],
            "wall_s": time.perf_counter() - started,
        }
        print(
            f"{name:15s} overhead per message: median {statistics.median(per_round):6.2f} s  "
            f"rounds {[round(o, 2) for o in per_round]}"
        )
    cold = results["flower_default"]["overhead_median_s"]
    warm_s = results["warm_executor"]["overhead_median_s"]
    results["ratio_warm_to_default"] = warm_s / cold
    verdict = "met" if warm_s <= OVERHEAD_TARGET_S else "not met"
    print(
        f"warm / default overhead: {warm_s / cold:.3f}  "
        f"(target <= {OVERHEAD_TARGET_S} s: {verdict})"
    )
    memory = memory_run()
    results["memory"] = memory
    verdict = "met" if memory["peak_rss_mb"] < RSS_TARGET_MB else "not met"
    print(
        f"peak RSS, CNN + DP-SGD on {memory['dataset']}: {memory['peak_rss_mb']:.0f} MB "
        f"(target < {RSS_TARGET_MB:.0f} MB: {verdict})"
    )
    if args.out:
        write_atomic(Path(args.out), json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
