"""Privacy–utility: federated DP-SGD accuracy at ε ∈ {1, 3, 8} beside centralized DP-SGD
at the same ε and the non-private federated run (the ``dp_utility`` preset).

Federated runs are real fedpriv runs on Flower's simulation engine (10 IID clients,
each spending the target ε over all rounds). The centralized reference trains the same
model with DP-SGD on the pooled training split for as many epochs (rounds × local
epochs), calibrated to the same (ε, δ). Digits always; Fashion-MNIST when its files
are installed (first ``--fashion-limit`` training images).

    python benchmarks/dp_utility.py [--seeds 0 1 2] [--epsilons 1 3 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from fedpriv import load_config, run
from fedpriv.config import ExperimentConfig
from fedpriv.errors import DataError
from fedpriv.privacy import NoPrivacy, train_dp_sgd
from fedpriv.results import write_atomic
from fedpriv.training import evaluate, seed_for

#: The protocol docs/benchmarks.md reports (an MLP, 1 local epoch a round, lr 0.1), pinned
#: here: the ``dp_utility`` study preset trains logistic regression with DP-SGD's defaults.
PROTOCOL = ["+arms/dp_utility=federated_eps3", "engine=simulation", "model=mlp",
            "train.local_epochs=1", "train.lr=0.1"]  # fmt: skip
DATASETS = {
    "digits": [*PROTOCOL, "data=digits", "train.batch_size=32"],
    "fashion_mnist": [*PROTOCOL, "data=fashion_mnist", "train.batch_size=64"],
}


def centralized_dp(config: ExperimentConfig) -> float:
    """Test accuracy of DP-SGD on the pooled data at the config's (ε, δ)."""
    data = config.federated_data().dataset
    torch.manual_seed(config.seed)
    model = config.model.build(data.input_shape, data.num_classes)
    epochs = config.rounds * config.train.local_epochs
    train = config.train.__class__(**{**config.train.__dict__, "local_epochs": epochs})
    steps = epochs * -(-len(data.y_train) // train.batch_size)
    train_dp_sgd(model, data.x_train, data.y_train, train, config.privacy.local_dp(),
                 seed=seed_for(config.seed, 0), planned_steps=steps)  # fmt: skip
    return evaluate(model, data.x_test, data.y_test)["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--fashion-limit", type=int, default=20000)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--out", type=Path, help="directory for dp_utility.json")
    args = parser.parse_args()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="fedpriv-dp-utility-"))
    for dataset in args.datasets:
        extra = [*DATASETS[dataset], "engine.verbose=false"]
        if dataset == "fashion_mnist":
            extra.append(f"data.limit={args.fashion_limit}")
        try:
            load_config(overrides=["+experiment=dp_utility", *extra]).data.load(seed=0)
        except DataError:
            print(
                f"{dataset}: files not installed, skipped (apt-get install dataset-fashion-mnist)"
            )
            continue
        for epsilon in [None, *args.epsilons]:
            fed, central = [], []
            for seed in args.seeds:
                out = work / f"{dataset}-{epsilon}-{seed}"
                overrides = ["+experiment=dp_utility", *extra, f"seed={seed}", f"output_dir={out}"]
                if epsilon is None:  # the same study without DP
                    cfg = load_config(overrides=overrides).replace(privacy=NoPrivacy())
                else:
                    cfg = load_config(overrides=[*overrides, f"privacy.target_epsilon={epsilon}"])
                result = run(cfg)
                fed.append(result.final["accuracy"])
                if epsilon is not None:
                    central.append(centralized_dp(cfg))
                    assert result.summary["privacy"]["epsilon_max"] <= epsilon + 1e-6
            row = {"dataset": dataset, "epsilon": epsilon, "federated": fed, "centralized": central}
            rows.append(row)
            fmean = statistics.mean(fed)
            label = "non-private" if epsilon is None else f"ε={epsilon:g}"
            line = f"{dataset:14} {label:12} federated {fmean:.4f} ± {statistics.pstdev(fed):.4f}"
            if central:
                cmean = statistics.mean(central)
                line += f"   centralized DP {cmean:.4f}   gap {100 * (cmean - fmean):+.1f} pts"
            print(line, flush=True)
    if args.out:
        write_atomic(args.out / "dp_utility.json", json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
