"""The centralized reference for a federated experiment: the same model, data and
optimizer trained on the pooled training split, for as many epochs as each client
trains in total (rounds × local epochs). ``make demo`` prints it beside the federated run.

    python benchmarks/centralized.py [HYDRA OVERRIDES...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fedpriv import load_config
from fedpriv.config import ExperimentConfig
from fedpriv.results import write_atomic
from fedpriv.training import evaluate, seed_for, train_local


def train_centrally(config: ExperimentConfig) -> dict[str, float]:
    """Test accuracy and loss of the model trained on all training data in one place."""
    data = config.federated_data().dataset
    torch.manual_seed(config.seed)
    model = config.model.build(data.input_shape, data.num_classes)
    for epoch in range(config.rounds):
        train_local(
            model, data.x_train, data.y_train, config.train, seed=seed_for(config.seed, epoch)
        )
    return evaluate(model, data.x_test, data.y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", default=["+experiment=demo"])
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    config = load_config(overrides=args.overrides)
    result = train_centrally(config)
    epochs = config.rounds * config.train.local_epochs
    print(
        f"centralized reference: {config.model.name} on {config.data.name}, {epochs} epochs "
        f"on the pooled data -> test accuracy {result['accuracy']:.4f} (loss {result['loss']:.4f})"
    )
    if args.out:
        write_atomic(args.out, json.dumps({"epochs": epochs, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
