"""What a real fleet costs per message, what its SuperLink pays for fast polling, and
what a device needs in memory.

A local fleet (``flower-superlink`` and ``--nodes`` SuperNodes on 127.0.0.1, TLS and
registered node keys) runs the same small FedAvg experiment, plaintext (one message
exchange per round), three ways: Flower's default (``flower-supernode``, a fresh
``flwr-clientapp`` process per message; the baseline), fedpriv's warm executor under
Flower's SuperNode loop, and fedpriv's (``fedpriv.deployment.supernode``: the same
SuperNode with its waits shortened). Overhead per exchange is a round's wall time minus
the slowest client's own work (``work-seconds``, measured on the device). Every fleet
logs at DEBUG (millisecond stamps), and ``message_path.py`` splits each message's way
into phases. Then a DP-SGD + CKKS round, fedpriv's way against its executor under
Flower's loop; and split-learning epochs (3 parties, PSI, the CKKS embedding sum: two
exchanges a batch) on the fleet against the same on Flower's simulation engine.

The SuperLink's load: ``--idle-nodes`` SuperNodes (no executors) idle against one
SuperLink, with Flower's 3 s poll, fedpriv's after it backed off, and fedpriv's at its
fastest (``--idle-growth 0``: every node waiting for a message mid-run); CPU % of the
SuperLink and of its Fleet proxy (nginx, which terminates TLS).

Last, one client trains the CNN on Fashion-MNIST (digits if it is not installed) with
DP-SGD and capped physical batches; its device telemetry gives the peak RSS.
Targets (issues 7, 22): overhead <= 0.5 s, peak RSS < 800 MB.

    python benchmarks/deployment.py [--rounds 6] [--nodes 3] [--idle-nodes 50]
        [--vertical-batch 256] [--parts overhead dp_ckks vertical_epoch idle_load memory]
        [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from message_path import breakdown, print_breakdown

from fedpriv.api import run
from fedpriv.config import load_config
from fedpriv.crypto import PRESETS
from fedpriv.crypto.ckks import CkksParams
from fedpriv.data.datasets import available
from fedpriv.deployment import LocalFleet, start_superlink, write_fleet_keys
from fedpriv.deployment.processes import (
    FlowerProcess,
    free_port,
    supernode_command,
    wait_for_port,
)
from fedpriv.deployment.supernode import POLL_INTERVAL_S
from fedpriv.results import write_atomic

OVERHEAD_TARGET_S, RSS_TARGET_MB = 0.5, 800.0
SMALL = ["data=digits", "model=logreg", "strategy=fedavg", "engine.torch_threads=1"]
PARTS = ["overhead", "dp_ckks", "vertical_epoch", "idle_load", "memory"]
#: Three parties on digits, PSI and the CKKS embedding sum: each batch is two exchanges.
VERTICAL = ["family=vertical", "vertical.parties=3", "num_clients=3", "strategy.merge=sum",
            "crypto=ckks", "data=digits", "engine.torch_threads=1"]  # fmt: skip
#: name: (LocalFleet's warm, fast_poll), baseline first.
SETUPS = {
    "flower_default": (False, False),
    "warm_executor_flower_loop": (True, False),
    "fedpriv": (True, True),
}


@contextlib.contextmanager
def debug_logs() -> Iterator[None]:
    """Flower's processes started inside log at DEBUG, stamped to the millisecond."""
    before = os.environ.get("FLWR_LOG_LEVEL")
    os.environ["FLWR_LOG_LEVEL"] = "DEBUG"
    try:
        yield
    finally:
        if before is None:
            del os.environ["FLWR_LOG_LEVEL"]
        else:
            os.environ["FLWR_LOG_LEVEL"] = before


def overheads(history: list[dict[str, Any]]) -> list[float]:
    """Per round: wall seconds minus the slowest replying client's own work."""
    return [
        record["seconds"] - max(client["work-seconds"] for client in record["clients"])
        for record in history
        if record["clients"]
    ]


def fleet_run(
    nodes: int,
    rounds: int,
    extra: list[str],
    *,
    warm: bool = True,
    fast_poll: bool = True,
    ckks: CkksParams | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The run's history and its messages' phases (medians, seconds)."""
    with tempfile.TemporaryDirectory(prefix="fedpriv-bench-") as tmp:
        fleet = LocalFleet(Path(tmp), nodes=nodes, warm=warm, fast_poll=fast_poll, ckks=ckks)
        with debug_logs():
            fleet.__enter__()  # only the fleet's processes log at DEBUG
        try:
            keys = [] if fleet.creds is None else [f"crypto.keys_dir={fleet.creds.directory}"]
            config = load_config(
                [
                    *SMALL,
                    f"num_clients={nodes}",
                    f"rounds={rounds}",
                    *extra,
                    *(keys if ckks else []),
                    *fleet.engine_overrides(),
                    f"output_dir={tmp}/run",
                ]
            )
            history = run(config).history
        finally:
            fleet.stop()
        return history, breakdown(Path(tmp) / "logs", history)


def overhead_runs(nodes: int, rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, (warm, fast_poll) in SETUPS.items():
        started = time.perf_counter()
        history, phases = fleet_run(nodes, rounds, [], warm=warm, fast_poll=fast_poll)
        per_round = overheads(history)
        steady = per_round[1:]  # the first round starts every node's ClientApp
        results[name] = {
            "overhead_s": per_round,
            "overhead_median_s": statistics.median(steady),
            "round_s": [record["seconds"] for record in history],
            "phases_median_s": phases,
            "wall_s": time.perf_counter() - started,
        }
        print(
            f"{name:26s} overhead per exchange: median {statistics.median(steady):6.2f} s "
            f"(rounds 2-{rounds})  all rounds {[round(o, 2) for o in per_round]}"
        )
        print_breakdown("  phases (median s, rounds 2+):", phases)
    base = results["flower_default"]["overhead_median_s"]
    for name in SETUPS:
        results[name]["ratio_to_flower_default"] = results[name]["overhead_median_s"] / base
    ours = results["fedpriv"]["overhead_median_s"]
    verdict = "met" if ours <= OVERHEAD_TARGET_S else "not met"
    print(
        "overhead / Flower's default: "
        + ", ".join(f"{n} {results[n]['ratio_to_flower_default']:.3f}" for n in SETUPS)
        + f"  (fedpriv {ours:.2f} s; target <= {OVERHEAD_TARGET_S} s: {verdict})"
    )
    return results


def dp_ckks_runs(nodes: int, rounds: int) -> dict[str, Any]:
    """DP-SGD + CKKS rounds, fedpriv's SuperNode against Flower's loop."""
    preset = PRESETS["ckks-128"]
    params = CkksParams(preset.poly_modulus_degree, preset.coeff_mod_bit_sizes, preset.scale_bits)
    extra = ["privacy=dp_sgd", "crypto=ckks"]
    results: dict[str, Any] = {}
    for name in ("warm_executor_flower_loop", "fedpriv"):
        _, fast_poll = SETUPS[name]
        history, phases = fleet_run(nodes, rounds, extra, fast_poll=fast_poll, ckks=params)
        steady = history[1:] or history
        results[name] = {
            "round_s": [record["seconds"] for record in history],
            "round_median_s": statistics.median(r["seconds"] for r in steady),
            "overhead_median_s": statistics.median(overheads(steady)),
            "phases_median_s": phases,
        }
        print(
            f"DP + CKKS, {name:26s} round: median {results[name]['round_median_s']:6.2f} s, "
            f"overhead {results[name]['overhead_median_s']:6.2f} s "
            f"(rounds {[round(r['seconds'], 2) for r in history]})"
        )
    results["round_ratio"] = (
        results["fedpriv"]["round_median_s"]
        / results["warm_executor_flower_loop"]["round_median_s"]
    )
    print(f"DP + CKKS round, fedpriv / Flower's loop: {results['round_ratio']:.3f}")
    return results


def vertical_epoch(batch_size: int, epochs: int) -> dict[str, Any]:
    """Split-learning epochs on the fleet (fedpriv's SuperNode) against the same
    experiment on Flower's simulation engine; the first epoch also starts every party,
    so the later ones are compared."""
    preset = PRESETS["ckks-128"]
    params = CkksParams(preset.poly_modulus_degree, preset.coeff_mod_bit_sizes, preset.scale_bits)
    extra = [*VERTICAL, f"train.batch_size={batch_size}", f"rounds={epochs}"]
    with tempfile.TemporaryDirectory(prefix="fedpriv-bench-") as tmp:
        with LocalFleet(Path(tmp), nodes=3, ckks=params) as fleet:
            assert fleet.creds is not None
            keys = f"crypto.keys_dir={fleet.creds.directory}"
            overrides = [*extra, keys, *fleet.engine_overrides(), f"output_dir={tmp}/fleet"]
            fleet_history = run(load_config(overrides)).history
        simulated = run(load_config([*extra, "engine=simulation", f"output_dir={tmp}/sim"]))
    results: dict[str, Any] = {"batch_size": batch_size}
    for name, history in (("fleet", fleet_history), ("simulation", simulated.history)):
        steady = [record["seconds"] for record in history[1:]] or [history[0]["seconds"]]
        results[name] = {
            "epoch_s": [record["seconds"] for record in history],
            "epoch_median_s": statistics.median(steady),
            "batches": history[-1]["vertical"]["batches"],
        }
    fleet, simulation = results["fleet"], results["simulation"]
    results["ratio"] = fleet["epoch_median_s"] / simulation["epoch_median_s"]
    print(
        f"vertical epoch (3 parties, digits, batch {batch_size}, {fleet['batches']} batches): "
        f"fleet {fleet['epoch_median_s']:.2f} s, simulation {simulation['epoch_median_s']:.2f} s, "
        f"fleet / simulation {results['ratio']:.2f}"
    )
    return results


def cpu_percent(processes: list[psutil.Process], seconds: float) -> list[float]:
    """Each process's CPU % (of one core, its children's included) over ``seconds``."""

    def used(process: psutil.Process) -> float:
        total = 0.0
        for each in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = each.cpu_times()
                total += times.user + times.system
        return total

    before = [used(p) for p in processes]
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return [100 * (used(p) - b) / elapsed for p, b in zip(processes, before, strict=True)]


def idle_load(nodes: int, settle_s: float = 40.0, measure_s: float = 20.0) -> dict[str, Any]:
    """The SuperLink's and its proxy's CPU % with ``nodes`` idle SuperNodes polling
    (none: what the SuperLink and its ServerApp executor cost alone)."""
    setups: dict[str, tuple[int, bool, list[str]]] = {
        "no_supernodes": (0, True, []),
        "flower_3s": (nodes, False, []),
        "fedpriv_backed_off": (nodes, True, []),
        "fedpriv_fastest": (nodes, True, ["--idle-growth", "0"]),
    }
    results: dict[str, Any] = {"nodes": nodes, "settle_s": settle_s, "measure_s": measure_s}
    with tempfile.TemporaryDirectory(prefix="fedpriv-idle-") as tmp:
        keys = write_fleet_keys(Path(tmp) / "keys", nodes=nodes)
        for name, (count, fast_poll, options) in setups.items():
            port, logs = free_port(), Path(tmp) / name
            with debug_logs():  # the SuperLink logs each pull: their rate
                link = start_superlink(
                    keys.superlink, host="127.0.0.1", port=port, api_port=free_port(), log_dir=logs
                )
            supernodes: list[FlowerProcess] = []
            try:
                ports = [free_port() for _ in range(count)]
                for k, runtime_port in enumerate(ports):
                    creds = keys.device(k)
                    command = supernode_command(
                        creds,
                        superlink=f"127.0.0.1:{port}",
                        node_config={"partition-id": k, "num-partitions": nodes},
                        node_key=creds.node_key(k),
                        runtime_port=runtime_port,
                        poll_interval=POLL_INTERVAL_S if fast_poll else None,
                    )
                    supernodes.append(
                        FlowerProcess(
                            f"node-{k}",
                            [*command, "--isolation", "process", *options],
                            logs / f"node-{k}.log",
                        )
                    )
                for node, runtime_port in zip(supernodes, ports, strict=True):
                    wait_for_port("127.0.0.1", runtime_port, timeout=300, process=node)
                time.sleep(settle_s)  # connected, and fedpriv's idle wait backed off
                alive = sum(node.alive() for node in supernodes)
                window = time.time()
                link_cpu, proxy_cpu = cpu_percent(
                    [psutil.Process(link.link.pid), psutil.Process(link.proxy.pid)], measure_s
                )
                pulls = pull_times(logs / "superlink.log")
                rate = sum(window <= t < window + measure_s for t in pulls) / measure_s
            finally:
                for node in supernodes:
                    node.stop()
                link.stop()
            results[name] = {
                "superlink_cpu_percent": link_cpu,
                "proxy_cpu_percent": proxy_cpu,
                "pulls_per_s": rate,
            }
            print(
                f"{count:2d} idle SuperNodes ({alive} alive), {name:18s}: {rate:6.1f} pulls/s, "
                f"SuperLink {link_cpu:5.1f} % CPU, Fleet proxy {proxy_cpu:5.1f} %"
            )
    base = results["no_supernodes"]["superlink_cpu_percent"]
    fastest = results["fedpriv_fastest"]
    if fastest["pulls_per_s"]:
        per_pull_ms = 10 * (fastest["superlink_cpu_percent"] - base) / fastest["pulls_per_s"]
        full_rate = nodes / POLL_INTERVAL_S
        results["superlink_ms_per_pull"] = per_pull_ms
        results["superlink_cpu_percent_at_full_rate"] = base + full_rate * per_pull_ms / 10
        print(
            f"SuperLink CPU per pull: {per_pull_ms:.2f} ms; {nodes} nodes all at "
            f"{POLL_INTERVAL_S} s ({full_rate:.0f} pulls/s) would take "
            f"{results['superlink_cpu_percent_at_full_rate']:.0f} % of a core"
        )
    return results


def pull_times(log: Path) -> list[float]:
    """When the SuperLink served each Fleet pull (its DEBUG log, epoch seconds)."""
    stamps = []
    for line in log.read_text(errors="replace").splitlines():
        if "[Fleet.PullMessages] node_id=" in line:
            stamp = line.split("DEBUG", 1)[-1].strip()[:23]
            with contextlib.suppress(ValueError):
                stamps.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return stamps


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
    history, _ = fleet_run(1, 1, extra)
    client = history[0]["clients"][0]
    return {
        "dataset": "fashion_mnist" if fashion else "digits",
        "peak_rss_mb": client["peak-rss-mb"],
        "rss_mb": client["rss-mb"],
        "train_seconds": client["train-seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--idle-nodes", type=int, default=50)
    parser.add_argument("--vertical-batch", type=int, default=256)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS)
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args()
    results: dict[str, Any] = {"rounds": args.rounds, "nodes": args.nodes}
    parts = {
        "overhead": lambda: overhead_runs(args.nodes, args.rounds),
        "dp_ckks": lambda: dp_ckks_runs(args.nodes, 3),
        "vertical_epoch": lambda: vertical_epoch(args.vertical_batch, 3),
        "idle_load": lambda: idle_load(args.idle_nodes),
        "memory": memory_run,
    }
    for part in args.parts:
        results[part] = parts[part]()
        if args.out:  # after each part: a later one failing keeps the earlier numbers
            write_atomic(Path(args.out), json.dumps(results, indent=2) + "\n")
    if memory := results.get("memory"):
        verdict = "met" if memory["peak_rss_mb"] < RSS_TARGET_MB else "not met"
        print(
            f"peak RSS, CNN + DP-SGD on {memory['dataset']}: {memory['peak_rss_mb']:.0f} MB "
            f"(target < {RSS_TARGET_MB:.0f} MB: {verdict})"
        )


if __name__ == "__main__":
    main()
