"""Swarm learning against FedAvg on the same data: accuracy and consensus distance per
round, bytes per peer.

Four runs on Flower's simulation engine, same data, partition, model, training and
seed: FedAvg (a server aggregates), and the swarm's ``leader`` (full graph, mean),
``gossip`` (ring, Metropolis-Hastings) and ``dinno`` (ring) strategies, where the server is
only a relay of end-to-end encrypted payloads. Accuracy is the global model's for
FedAvg, the merged model's for ``leader`` and the mean over peers' own models for
``gossip`` and ``dinno`` (min-max in the JSON).

    python benchmarks/swarm.py [--rounds 10] [--clients 10] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from fedpriv import load_config, run
from fedpriv.results import write_atomic

RUNS: dict[str, list[str]] = {
    "fedavg": [],
    "leader": ["family=swarm", "strategy=leader", "swarm.topology=full"],
    "gossip": ["family=swarm", "strategy=gossip", "swarm.topology=ring"],
    "dinno": ["family=swarm", "strategy=dinno", "swarm.topology=ring"],
}


def measure(name: str, overrides: list[str], common: list[str], out: Path) -> dict[str, Any]:
    result = run(load_config([*overrides, *common, f"output_dir={out}"]))
    rounds = []
    for record in result.history:
        peers = record["clients"]
        swarm = record.get("swarm", {})
        rounds.append(
            {
                "accuracy": record["accuracy"],
                "consensus_distance": swarm.get("consensus_distance"),
                "accuracy_min": swarm.get("accuracy_min"),
                "accuracy_max": swarm.get("accuracy_max"),
                "bytes_per_peer": statistics.mean(
                    c.get("bytes_up", 0) + c.get("bytes_down", 0) for c in peers
                )
                if "bytes_up" in peers[0]
                else (record["bytes_up"] + record["bytes_down"]) / len(peers),
                "consensus_bytes_per_peer": swarm.get("consensus_bytes", 0) / len(peers),
                "seconds": record["seconds"],
            }
        )
    return {"name": name, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    common = [f"data={args.data}", f"num_clients={args.clients}", f"rounds={args.rounds}"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(n, o, common, Path(tmp) / n) for n, o in RUNS.items()]
    print(f"\n{args.data}, {args.clients} peers/clients; accuracy (consensus distance)")
    print(f"{'round':>5} " + " ".join(f"{r['name']:>16}" for r in runs))
    for i in range(args.rounds):
        cells = []
        for r in runs:
            row = r["rounds"][i] if i < len(r["rounds"]) else None
            if row is None:
                cells.append(f"{'-':>16}")
            elif row["consensus_distance"] is None:
                cells.append(f"{row['accuracy']:>16.3f}")
            else:
                cells.append(f"{row['accuracy']:>7.3f} ({row['consensus_distance']:>6.3f})")
        print(f"{i + 1:>5} " + " ".join(cells))
    print("\nbytes per peer per round (mean) for learning, against FedAvg's per client,")
    print("and for measuring the consensus distance (CKKS secure sum)")
    base = statistics.mean(row["bytes_per_peer"] for row in runs[0]["rounds"])
    for r in runs:
        measuring = statistics.mean(row["consensus_bytes_per_peer"] for row in r["rounds"])
        learning = statistics.mean(row["bytes_per_peer"] for row in r["rounds"]) - measuring
        print(
            f"{r['name']:>8} {learning / 1e3:>10.1f} kB  {learning / base:>6.2f}×"
            f"  + {measuring / 1e3:>8.1f} kB measuring"
        )
    if args.out:
        write_atomic(args.out, json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
