"""crypto=ckks_secagg against crypto=ckks and against Flower's own SecAgg+, in one run.

fedpriv's side: the same experiment (``--clients`` clients, ``model=mlp`` on digits,
FedAvg, ``--rounds`` rounds) with ``crypto=none``, ``crypto=ckks`` and
``crypto=ckks_secagg``, in process; bytes up and down per round (every payload the server
sent or received, the ceremony included) and the seconds of a round (the first left out:
it also starts the nodes). Flower's side: its ``SecAggPlusWorkflow`` and
``secaggplus_mod`` on a legacy FedAvg ServerApp, and the same apps without them, over
updates of the same size, on the same in-process engine; a counting mod outside
``secaggplus_mod`` adds up every payload. Ratios are against ``crypto=ckks`` (fedpriv)
and against Flower without SecAgg+; thresholds are the same (a majority).

    python benchmarks/secagg.py [--clients 10] [--rounds 4] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
from flwr.app import Context, Message
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from fedpriv import load_config, run
from fedpriv.records import payload_nbytes
from fedpriv.results import write_atomic
from fedpriv.runtime.inprocess import run_inprocess


def fedpriv_run(crypto: str, clients: int, rounds: int, out: Path) -> dict[str, Any]:
    overrides = [
        f"crypto={crypto}",
        f"num_clients={clients}",
        f"rounds={rounds}",
        "model=mlp",
        "engine=inprocess",
        "overwrite=true",
        f"output_dir={out / crypto}",
    ]
    result = run(load_config(overrides).to_dict())
    history = result.history
    later = history[1:] or history
    return {
        "params": history[0]["crypto"]["plaintext_bytes_up"] // (4 * clients)
        if "crypto" in history[0]
        else None,
        "bytes_up": sum(r["bytes_up"] for r in history) / rounds,
        "bytes_down": sum(r["bytes_down"] for r in history) / rounds,
        "round_seconds": float(np.mean([r["seconds"] for r in later])),
        "accuracy": history[-1]["accuracy"],
    }


class _Counter:
    """A client mod counting every payload in and out (outside SecAgg+'s mod)."""

    def __init__(self) -> None:
        self.down = self.up = 0

    def __call__(self, msg: Message, context: Context, call_next: Any) -> Message:
        self.down += payload_nbytes(msg.content) if msg.has_content() else 0
        reply = call_next(msg, context)
        self.up += payload_nbytes(reply.content) if reply.has_content() else 0
        return reply


def _mark(times: list[float]) -> None:
    """Flower calls the evaluate function once per round: note when."""
    times.append(time.perf_counter())


class _Fixed(NumPyClient):
    """A client whose 'training' returns a fixed random update of ``size`` values."""

    def __init__(self, size: int, seed: int) -> None:
        self.update = np.random.default_rng(seed).normal(0, 0.1, size).astype(np.float32)

    def fit(self, parameters: Any, config: Any) -> Any:
        return [self.update], 100, {}


def flower_run(secagg: bool, clients: int, rounds: int, size: int) -> dict[str, Any]:
    counter = _Counter()
    mods: list[Any] = [counter, secaggplus_mod] if secagg else [counter]

    def client_fn(context: Context) -> Any:
        return _Fixed(size, int(context.node_config["partition-id"])).to_client()

    server = ServerApp()
    round_ends: list[float] = []

    @server.main()
    def main(grid: Any, context: Context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_available_clients=clients,
            initial_parameters=ndarrays_to_parameters([np.zeros(size, np.float32)]),
            evaluate_fn=lambda r, p, c: _mark(round_ends),
        )
        legacy = LegacyContext(context, ServerConfig(num_rounds=rounds), strategy)
        fit = SecAggPlusWorkflow(clients, clients // 2 + 1) if secagg else None
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)

    quiet = cast(Any, SimpleNamespace(verbose=False))  # all run_inprocess reads of an engine
    run_inprocess(server, ClientApp(client_fn, mods=mods), clients, quiet)
    seconds = np.diff(round_ends)[1:] if len(round_ends) > 2 else np.diff(round_ends)
    return {
        "bytes_up": counter.up / rounds,
        "bytes_down": counter.down / rounds,
        "round_seconds": float(np.mean(seconds)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    scratch = Path("/tmp/fedpriv-bench-secagg")
    ours = {c: fedpriv_run(c, args.clients, args.rounds, scratch) for c in
            ("none", "ckks", "ckks_secagg")}  # fmt: skip
    size = ours["ckks"]["params"]
    flower = {"plain": flower_run(False, args.clients, args.rounds, size),
              "secagg+": flower_run(True, args.clients, args.rounds, size)}  # fmt: skip
    rows = [("fedpriv crypto=" + k, v, ours["ckks"]) for k, v in ours.items()]
    rows += [("flower " + k, v, flower["plain"]) for k, v in flower.items()]
    print(f"{args.clients} clients, {size} parameters, {args.rounds} rounds (per round)")
    print("| run | bytes up | bytes down | round s | up ratio | down ratio | time ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, row, base in rows:
        print(
            f"| {name} | {row['bytes_up']:.3g} | {row['bytes_down']:.3g} | "
            f"{row['round_seconds']:.3f} | {row['bytes_up'] / base['bytes_up']:.2f}× | "
            f"{row['bytes_down'] / base['bytes_down']:.2f}× | "
            f"{row['round_seconds'] / base['round_seconds']:.2f}× |"
        )
    if args.out:
        write_atomic(args.out, json.dumps({"fedpriv": ours, "flower": flower}, indent=2))


if __name__ == "__main__":
    main()
