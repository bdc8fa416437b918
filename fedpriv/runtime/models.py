"""The global model: built for the data as the privacy mode trains it, seeded from the
config, turned into Flower arrays and evaluated on the held-out test split. Every family
that has a global model (horizontal, swarm) and the audits use these."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord
from torch import nn

from fedpriv.config import ExperimentConfig
from fedpriv.data.datasets import Dataset
from fedpriv.data.federated import FederatedData
from fedpriv.errors import ConfigError
from fedpriv.training import evaluate


def fresh_model(config: ExperimentConfig, dataset: Dataset) -> nn.Module:
    """A new model for ``dataset``, as the privacy mode trains it (Opacus-ready under
    DP-SGD)."""
    model = config.model.build(dataset.input_shape, dataset.num_classes)
    return config.privacy.prepare_model(model)


def initial_arrays(config: ExperimentConfig, data: FederatedData) -> ArrayRecord:
    """The seeded initial global model; a model that does not fit the data is a ConfigError."""
    torch.manual_seed(config.seed)
    try:
        model = fresh_model(config, data.dataset)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return ArrayRecord(model.state_dict())


def evaluate_arrays(
    config: ExperimentConfig, data: FederatedData, arrays: ArrayRecord
) -> dict[str, float]:
    """Accuracy and loss of a global model on the held-out test split."""
    model = fresh_model(config, data.dataset)
    model.load_state_dict(arrays.to_torch_state_dict())
    return evaluate(model, data.dataset.x_test, data.dataset.y_test, device=config.train.device)
