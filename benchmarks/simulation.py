"""What fedpriv costs on Flower's simulation engine, against bare Flower and a plain loop.

For each client count N, three implementations do the same work -- N clients each
train the digits MLP (IID partition, hidden [128], 1 local epoch, batch 32, lr 0.05,
seed 0) from the global model with ``fedpriv.training.train_local``, the server takes
the example-weighted mean of their models and evaluates it on the test split:

* **floor**: an in-process Python loop, no engine at all. What the arithmetic costs.
* **flower**: a plain Flower Message-API app (``FedAvg.start`` in a ``ServerApp``, a
  ``ClientApp`` whose train handler calls ``train_local``) run by ``run_simulation``
  with the same Ray ``backend_config`` and environment as fedpriv. What Flower costs.
* **fedpriv**: ``fedpriv.run(config)``. What a user of fedpriv pays.
* **fedpriv-poll** (if named in ``--implementations``): the same with the simulation's
  messages polled for, as before :mod:`fedpriv.runtime.flower_wakeup` (the engine
  every 0.1 s, the server every 50 ms). fedpriv/fedpriv-poll is what wake-ups save.

Two numbers per implementation: seconds from the start of the run call to the end of
round 1 (engine start-up included), and the steady-state seconds per round (median of
rounds 2..R, each from the end of the previous round to the end of this one). With
``--repeat K`` each number is the median of K runs, and every other repeat runs fedpriv
before Flower so that neither always starts right after the other's Ray shut down.

The ratio fedpriv/flower is what fedpriv adds on top of Flower (reply checks, bytes
accounting, the results directory, per-round records); the target is <= 1.10 in steady
state. flower/floor is the engine's own cost; fedpriv/floor is what a user pays over
the arithmetic (issue #24's goal: <= 2 in steady state at N = 10). Bare Flower polls
(``InMemoryGrid.send_and_receive`` sleeps 0.1 s between pulls), so fedpriv can be faster
than it. Absolute seconds depend on the machine and its load; the ratios, taken in one
run, are the result.

    python benchmarks/simulation.py [--clients 10 100] [--rounds 5] [--repeat 1]
                                    [--implementations floor flower fedpriv fedpriv-poll]
                                    [--out F]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from unittest import mock

import flwr
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

import fedpriv
from fedpriv import load_config
from fedpriv.config import ExperimentConfig
from fedpriv.data import federate
from fedpriv.results import write_atomic
from fedpriv.runtime import simulation
from fedpriv.runtime.models import initial_arrays
from fedpriv.runtime.simulation import ENVIRONMENT, backend_config, quiet_flower
from fedpriv.training import evaluate, seed_for, train_local

IMPLEMENTATIONS = ("floor", "flower", "fedpriv", "fedpriv-poll")
TARGET_FEDPRIV_OVER_FLOWER = 1.10
TARGET_FEDPRIV_OVER_FLOOR = 2.0


@dataclasses.dataclass
class Timing:
    """One run of one implementation: when each round ended, from the start of the call."""

    name: str
    round_ends: list[float]
    final_accuracy: float | None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def first_round(self) -> float:
        """Seconds from the start of the run call to the end of round 1."""
        return self.round_ends[0]

    @property
    def round_seconds(self) -> list[float]:
        """Seconds of rounds 2..R, each from the end of the round before."""
        ends = self.round_ends
        return [b - a for a, b in itertools.pairwise(ends)]

    @property
    def steady(self) -> float | None:
        """Median seconds per round over rounds 2..R (None with a single round)."""
        return statistics.median(self.round_seconds) if len(self.round_ends) > 1 else None


def experiment(num_clients: int, rounds: int) -> ExperimentConfig:
    """The benchmark's experiment, composed like every fedpriv run (Hydra overrides)."""
    return load_config(
        overrides=[
            "data=digits",
            "partition=iid",
            "model=mlp",
            "model.hidden=[128]",
            "strategy=fedavg",
            "train.local_epochs=1",
            "train.batch_size=32",
            "train.lr=0.05",
            "train.device=cpu",  # engine overhead, on a client's CPU, on any machine
            f"num_clients={num_clients}",
            f"rounds={rounds}",
            "seed=0",
        ]
    )


# -- (a) floor: an in-process loop ------------------------------------------------------
def run_floor(cfg: ExperimentConfig) -> Timing:
    """Local training and example-weighted averaging in a plain loop, no engine.

    Training runs with ``engine.torch_threads`` threads, as each simulated client does.
    """
    federate.cache_clear()
    threads = torch.get_num_threads()
    started = time.perf_counter()
    data = cfg.federated_data()
    shape, classes = data.dataset.input_shape, data.dataset.num_classes
    global_state: dict[str, torch.Tensor] = dict(initial_arrays(cfg, data).to_torch_state_dict())
    ends: list[float] = []
    metrics: dict[str, float] = {}
    try:
        for server_round in range(1, cfg.rounds + 1):
            torch.set_num_threads(cfg.engine.torch_threads or 1)
            states, weights = [], []
            for pid in range(cfg.num_clients):
                x, y = data.client(pid)
                model = cfg.model.build(shape, classes)
                model.load_state_dict(global_state)
                stats = train_local(
                    model, x, y, cfg.train, seed=seed_for(cfg.seed, server_round, pid)
                )
                states.append(model.state_dict())
                weights.append(stats.num_examples)
            global_state = weighted_mean(states, weights)
            torch.set_num_threads(threads)
            model = cfg.model.build(shape, classes)
            model.load_state_dict(global_state)
            metrics = evaluate(model, data.dataset.x_test, data.dataset.y_test)
            ends.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return Timing("floor", ends, metrics.get("accuracy"))


def weighted_mean(
    states: list[dict[str, torch.Tensor]], weights: list[int]
) -> dict[str, torch.Tensor]:
    """Example-weighted mean of state dicts (the arithmetic of Flower's FedAvg)."""
    total = float(sum(weights))
    out: dict[str, torch.Tensor] = {}
    for state, weight in zip(states, weights, strict=True):
        for key, value in state.items():
            term = value.detach() * (weight / total)
            out[key] = term if key not in out else out[key] + term
    return out


# -- (b) bare Flower: a plain Message-API app -----------------------------------------------
class BareClient:
    """A plain Flower train handler doing what fedpriv's horizontal client does.

    A module-level class, as in any Flower project: Flower's Ray backend pickles the
    ClientApp with every message, and cloudpickle names an importable class by reference
    but copies a closure (or anything in ``__main__``) by value, which costs ~3 ms per
    message in the driver and would make bare Flower look slower than it is.
    """

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg

    def train(self, msg: Message, context: Context) -> Message:
        cfg = self.cfg
        torch.set_num_threads(cfg.engine.torch_threads or 1)
        data = cfg.federated_data()
        pid = int(context.node_config["partition-id"])
        x, y = data.client(pid)
        model = cfg.model.build(data.dataset.input_shape, data.dataset.num_classes)
        model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        server_round = int(cast(int, msg.content.config_records["config"]["server-round"]))
        stats = train_local(model, x, y, cfg.train, seed=seed_for(cfg.seed, server_round, pid))
        metrics = MetricRecord(
            {
                "num-examples": stats.num_examples,
                "train-loss": stats.loss,
                "train-accuracy": stats.accuracy,
            }
        )
        reply = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
        return Message(content=reply, reply_to=msg)


def flower_client_app(cfg: ExperimentConfig) -> ClientApp:
    """A ClientApp with one train handler, :class:`BareClient`."""
    app = ClientApp()
    app.train()(BareClient(cfg).train)
    return app


def run_flower(cfg: ExperimentConfig) -> Timing:
    """``FedAvg.start`` on ``run_simulation``, evaluating on the test split each round."""
    federate.cache_clear()
    ends: list[float] = []
    accuracy: list[float] = []
    started = time.perf_counter()
    data = cfg.federated_data()
    initial = initial_arrays(cfg, data)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:  # fedpriv does not evaluate the initial model
            return None
        model = cfg.model.build(data.dataset.input_shape, data.dataset.num_classes)
        model.load_state_dict(arrays.to_torch_state_dict())
        metrics = evaluate(model, data.dataset.x_test, data.dataset.y_test)
        accuracy.append(metrics["accuracy"])
        ends.append(time.perf_counter() - started)
        return MetricRecord(dict(metrics))

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=cfg.num_clients,
            min_evaluate_nodes=0,
            min_available_nodes=cfg.num_clients,
        )
        strategy.start(
            grid,
            initial_arrays=initial,
            num_rounds=cfg.rounds,
            timeout=cfg.engine.round_timeout_s,
            evaluate_fn=evaluate_fn,
        )

    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    with quiet_flower():
        run_simulation(
            server_app=server,
            client_app=flower_client_app(cfg),
            num_supernodes=cfg.num_clients,
            backend_config=backend_config(cfg.engine),  # type: ignore[arg-type]
        )
    if len(ends) != cfg.rounds:
        raise RuntimeError(f"bare Flower finished {len(ends)} of {cfg.rounds} rounds")
    return Timing("flower", ends, accuracy[-1])


# -- (c) fedpriv ----------------------------------------------------------------------------
class RoundClock(logging.Handler):
    """Notes when fedpriv logs each finished round (``RunContext.end_round``).

    ``Result.history`` times rounds from the ServerApp's start; this clock sees the end
    of round 1 from the start of the ``run`` call, engine start-up included.
    """

    def __init__(self, started: Callable[[], float]) -> None:
        super().__init__(logging.INFO)
        self.started = started
        self.ends: dict[int, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(record.msg, str) and record.msg.startswith("round ") and args:
            server_round = cast(tuple[int, ...], args)[0]
            self.ends[int(server_round)] = time.perf_counter() - self.started()


def run_fedpriv_polling(cfg: ExperimentConfig) -> Timing:
    """``fedpriv.run`` without :mod:`fedpriv.runtime.flower_wakeup`: both sides poll."""
    with mock.patch.object(simulation, "wake_on_store", contextlib.nullcontext):
        timing = run_fedpriv(cfg)
    return dataclasses.replace(timing, name="fedpriv-poll")


def run_fedpriv(cfg: ExperimentConfig) -> Timing:
    """``fedpriv.run`` with its results directory in a temporary folder."""
    federate.cache_clear()
    logger = logging.getLogger("fedpriv")
    level, propagate = logger.level, logger.propagate
    started = 0.0
    clock = RoundClock(lambda: started)
    logger.addHandler(clock)  # fedpriv then adds no console handler: its log stays quiet
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with tempfile.TemporaryDirectory(prefix="fedpriv-bench-") as tmp:
            config = cfg.replace(output_dir=str(Path(tmp) / "run"))
            started = time.perf_counter()
            result = fedpriv.run(config)
    finally:
        logger.removeHandler(clock)
        logger.setLevel(level)
        logger.propagate = propagate
    ends = [clock.ends[r["round"]] for r in result.history if r["round"] in clock.ends]
    if len(ends) != cfg.rounds:
        raise RuntimeError(f"saw {len(ends)} of {cfg.rounds} fedpriv rounds end")
    extra = {
        "history_seconds": [r["seconds"] for r in result.history],
        "history_elapsed": [r["elapsed"] for r in result.history],
        "summary_seconds": result.summary["seconds"],
        "summary_seconds_first_round": result.summary["seconds_first_round"],
        # run call -> RunContext created in the ServerApp (Ray start-up, node start)
        "startup": ends[0] - result.history[0]["elapsed"],
    }
    return Timing("fedpriv", ends, result.final["accuracy"], extra)


# -- report ---------------------------------------------------------------------------------
RUNNERS: dict[str, Callable[[ExperimentConfig], Timing]] = {
    "floor": run_floor,
    "flower": run_flower,
    "fedpriv": run_fedpriv,
    "fedpriv-poll": run_fedpriv_polling,
}


def median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(runs: dict[str, list[Timing]]) -> dict[str, Any]:
    """Per implementation: medians over repeats; and the ratios between implementations."""
    out: dict[str, Any] = {"implementations": {}, "ratios": {}}
    for name, timings in runs.items():
        out["implementations"][name] = {
            "first_round_s": median_or_none([t.first_round for t in timings]),
            "steady_round_s": median_or_none([t.steady for t in timings]),
            "final_accuracy": timings[-1].final_accuracy,
            "runs": [
                {
                    "round_ends_s": t.round_ends,
                    "first_round_s": t.first_round,
                    "steady_round_s": t.steady,
                    "final_accuracy": t.final_accuracy,
                    **t.extra,
                }
                for t in timings
            ],
        }
    impl = out["implementations"]
    pairs = [
        ("fedpriv", "floor"),
        ("flower", "floor"),
        ("fedpriv", "flower"),
        ("fedpriv-poll", "floor"),
        ("fedpriv", "fedpriv-poll"),
    ]
    for a, b in (pair for pair in pairs if set(pair) <= set(impl)):
        out["ratios"][f"{a}/{b}"] = {
            "first_round": ratio(impl[a]["first_round_s"], impl[b]["first_round_s"]),
            "steady": ratio(impl[a]["steady_round_s"], impl[b]["steady_round_s"]),
        }
    return out


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(num_clients: int, rounds: int, repeat: int, summary: dict[str, Any]) -> None:
    """The table for one client count."""
    impl, ratios = summary["implementations"], summary["ratios"]
    runs = f", median of {repeat} runs" if repeat > 1 else ""
    print(f"\nN = {num_clients} clients, {rounds} rounds{runs}")
    print(f"  {'':<16}{'first round (s)':>16}{'steady (s/round)':>18}{'final acc':>11}")
    for name in impl:
        row = impl[name]
        print(
            f"  {name:<16}{fmt(row['first_round_s'], '.3f'):>16}"
            f"{fmt(row['steady_round_s'], '.3f'):>18}{fmt(row['final_accuracy'], '.4f'):>11}"
        )
    print(f"  {'ratio':<16}{'first round':>16}{'steady':>18}")
    for key, value in ratios.items():
        note = ""
        if key == "fedpriv/flower" and value["steady"] is not None:
            ok = value["steady"] <= TARGET_FEDPRIV_OVER_FLOWER
            note = f"   (what fedpriv adds; target <= {TARGET_FEDPRIV_OVER_FLOWER:.2f}"
            note += ": met)" if ok else ": NOT met)"
        if key == "fedpriv/floor" and value["steady"] is not None:
            ok = value["steady"] <= TARGET_FEDPRIV_OVER_FLOOR
            note = f"   (over the floor; target <= {TARGET_FEDPRIV_OVER_FLOOR:.1f}"
            note += ": met)" if ok else ": NOT met)"
        if key == "fedpriv/fedpriv-poll":
            note = "   (wake-ups over polling)"
        print(
            f"  {key:<16}{fmt(value['first_round'], '.2f'):>16}"
            f"{fmt(value['steady'], '.2f'):>18}{note}"
        )
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per run (>= 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per implementation")
    parser.add_argument(
        "--implementations",
        nargs="+",
        choices=IMPLEMENTATIONS,
        default=list(IMPLEMENTATIONS[:3]),
        help="which to run (fedpriv-poll: fedpriv without wake-ups)",
    )
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (steady state is the median of rounds 2..R)")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    report: dict[str, Any] = {
        "setup": {
            "data": "digits",
            "partition": "iid",
            "model": "mlp hidden=[128]",
            "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
            "seed": 0,
            "rounds": args.rounds,
            "repeat": args.repeat,
            "cpus": os.cpu_count(),
            "flwr": flwr.__version__,
            "torch": torch.__version__,
            "fedpriv": fedpriv.__version__,
            "implementations": args.implementations,
        },
        "results": {},
    }
    run_floor(experiment(args.clients[0], 1))  # warm-up: first-time imports, untimed
    for num_clients in args.clients:
        cfg = experiment(num_clients, args.rounds)
        names = tuple(name for name in IMPLEMENTATIONS if name in args.implementations)
        runs: dict[str, list[Timing]] = {name: [] for name in names}
        for rep in range(args.repeat):
            # Odd repeats run fedpriv before Flower, so neither always follows the other.
            order = names if rep % 2 == 0 else ("floor", *reversed(names[1:]))
            for name in order:
                print(f"N={num_clients}: {name} ...", end=" ", flush=True)
                timing = RUNNERS[name](cfg)
                runs[name].append(timing)
                print(f"first round {timing.first_round:.2f}s, steady {fmt(timing.steady, '.3f')}s")
        summary = summarize(runs)
        report["results"][str(num_clients)] = summary
        print_table(num_clients, args.rounds, args.repeat, summary)
    if args.out:
        write_atomic(args.out, json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    # Run as the importable module `simulation` (this script's folder is on sys.path, and
    # Ray gives its workers the driver's sys.path), not as __main__, so that the ClientApp
    # Ray pickles per message refers to BareClient by name (see BareClient).
    importlib.import_module("simulation").main()
