"""What a simulation costs as the population grows: start-up and per-message round cost.

Two measurements on Flower's simulation engine, the digits MLP of
``benchmarks/simulation.py`` (IID, hidden [128], 1 local epoch, batch 32, seed 0):

* **start-up**: seconds from the ``fedpriv.run`` call to the end of round 1 with
  ``--cohort`` clients sampled per round, at each population in ``--population``. The
  ratio largest / smallest population is the result: the goal is 1 (a run costs what
  its sampled cohort costs, not the population). ``warm``: in this process after an
  untimed run, so Ray and its actors are up and only what grows with N is left;
  ``cold``: each run in a fresh process, as ``fedpriv run`` pays it.
* **per-message round cost**: the steady round (median of rounds 2..R) with every
  client training, divided by N, at each size in ``--all-clients``. The ratio largest /
  smallest is the result: the goal is <= 1 (rounds grow linearly with N, not worse).

Each measurement runs in two variants, interleaved in the same run: ``after`` is
fedpriv as it is; ``before`` switches off what removed the growth with N: the
link-state index (:mod:`fedpriv.runtime.linkstate_index`, so Flower's link state scans
every stored message for every node on each tick) and the engine's partition map
(:mod:`fedpriv.runtime.engine_partitions`, so the warm-up contacts every node).

    python benchmarks/population.py [--population 10 1000] [--cohort 10]
        [--all-clients 100 1000] [--rounds 3] [--modes cold warm] [--out F]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fedpriv
from fedpriv import load_config
from fedpriv.results import write_atomic

VARIANTS = ("before", "after")


def overrides(num_clients: int, per_round: int, rounds: int) -> list[str]:
    """The benchmark's experiment: ``per_round`` of ``num_clients`` clients train."""
    return [
        "data=digits",
        "partition=iid",
        "model=mlp",
        "model.hidden=[128]",
        "strategy=fedavg",
        f"strategy.fraction_train={per_round / num_clients!r}",
        "train.local_epochs=1",
        "train.batch_size=32",
        "train.lr=0.05",
        f"num_clients={num_clients}",
        f"rounds={rounds}",
        "seed=0",
    ]


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """``after``: fedpriv as it is; ``before``: Flower's link-state scan and a warm-up
    of every node, as before the population-scale changes."""
    if name == "after":
        yield
        return
    from fedpriv.runtime import simulation
    from fedpriv.strategies.horizontal import common

    index, partitions = simulation.indexed_linkstate, common.engine_partitions
    simulation.indexed_linkstate = contextlib.nullcontext  # type: ignore[assignment]
    common.engine_partitions = lambda grid: None
    try:
        yield
    finally:
        simulation.indexed_linkstate, common.engine_partitions = index, partitions


class RoundClock(logging.Handler):
    """When fedpriv logs each finished round, in seconds from ``started``."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.started = time.perf_counter()
        self.ends: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("round "):
            self.ends.append(time.perf_counter() - self.started)


def measure(name: str, num_clients: int, per_round: int, rounds: int) -> dict[str, Any]:
    """One run in this process: start-up (to the end of round 1) and steady round."""
    logger = logging.getLogger("fedpriv")
    level, propagate = logger.level, logger.propagate
    clock = RoundClock()
    logger.addHandler(clock)  # fedpriv then adds no console handler
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with tempfile.TemporaryDirectory(prefix="fedpriv-pop-") as tmp, variant(name):
            config = load_config(
                [*overrides(num_clients, per_round, rounds), f"output_dir={tmp}/run"]
            )
            clock.started = time.perf_counter()
            fedpriv.run(config)
    finally:
        logger.removeHandler(clock)
        logger.setLevel(level)
        logger.propagate = propagate
    if len(clock.ends) != rounds:
        raise RuntimeError(f"saw {len(clock.ends)} of {rounds} rounds end")
    steady = [b - a for a, b in itertools.pairwise(clock.ends)]
    return {"startup_s": clock.ends[0], "steady_s": statistics.median(steady) if steady else None}


def measure_in_child(name: str, num_clients: int, per_round: int, rounds: int) -> dict[str, Any]:
    """:func:`measure` in a fresh Python process (Ray and every import paid again)."""
    args = [sys.executable, __file__, "--one", json.dumps([name, num_clients, per_round, rounds])]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"child run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def startup_table(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Start-up at each population, both variants; and the largest / smallest ratio."""
    small, large = min(args.population), max(args.population)
    runner = measure if mode == "warm" else measure_in_child
    out: dict[str, Any] = {}
    for name in VARIANTS:
        out[name] = {}
    for k, n in enumerate(args.population):
        for name in VARIANTS if k % 2 == 0 else VARIANTS[::-1]:  # neither always first
            print(f"start-up ({mode}) {name} N={n} ...", end=" ", flush=True)
            got = runner(name, n, min(args.cohort, n), args.rounds)
            out[name][n] = got
            print(f"{got['startup_s']:.2f}s, round {fmt(got['steady_s'], '.3f')}s", flush=True)
    print(f"\nstart-up ({mode}): run call -> end of round 1, {args.cohort} clients per round")
    print(f"  {'':<8}" + "".join(f"{f'N={n} (s)':>14}" for n in args.population) + "   ratio")
    for name in VARIANTS:
        row = out[name]
        row["ratio"] = ratio(row[large]["startup_s"], row[small]["startup_s"])
        cells = "".join(f"{row[n]['startup_s']:>14.2f}" for n in args.population)
        print(f"  {name:<8}{cells}   N={large}/N={small} = {fmt(row['ratio'], '.2f')}")
    return out


def per_message_table(args: argparse.Namespace) -> dict[str, Any]:
    """Steady round / N with every client training, both variants; largest / smallest."""
    small, large = min(args.all_clients), max(args.all_clients)
    out: dict[str, Any] = {name: {} for name in VARIANTS}
    for k, n in enumerate(args.all_clients):
        for name in VARIANTS if k % 2 == 0 else VARIANTS[::-1]:
            print(f"all clients {name} N={n} ...", end=" ", flush=True)
            got = measure(name, n, n, args.rounds)
            got["ms_per_message"] = 1000 * got["steady_s"] / n
            out[name][n] = got
            print(f"round {got['steady_s']:.2f}s = {got['ms_per_message']:.2f} ms/message")
    print("\nper-message round cost: steady round / N, every client training")
    print(f"  {'':<8}" + "".join(f"{f'N={n} (ms)':>14}" for n in args.all_clients) + "   ratio")
    for name in VARIANTS:
        row = out[name]
        row["ratio"] = ratio(row[large]["ms_per_message"], row[small]["ms_per_message"])
        cells = "".join(f"{row[n]['ms_per_message']:>14.2f}" for n in args.all_clients)
        print(f"  {name:<8}{cells}   N={large}/N={small} = {fmt(row['ratio'], '.2f')}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--cohort", type=int, default=10, help="clients sampled per round")
    parser.add_argument("--all-clients", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (>= 2)")
    parser.add_argument("--modes", nargs="*", choices=("cold", "warm"), default=["cold", "warm"])
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child's single measurement
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*json.loads(args.one))))
        return
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (steady state is the median of rounds 2..R)")

    report: dict[str, Any] = {
        "setup": {"cohort": args.cohort, "rounds": args.rounds, "cpus": os.cpu_count()},
        "startup": {},
    }
    if "cold" in args.modes:  # first: no warm Ray of this process beside the children's
        report["startup"]["cold"] = startup_table(args, "cold")
    if "warm" in args.modes:
        measure("after", min(args.population), min(args.cohort, min(args.population)), 2)
        report["startup"]["warm"] = startup_table(args, "warm")
    if args.all_clients:
        report["per_message"] = per_message_table(args)
    if args.out:
        write_atomic(args.out, json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
