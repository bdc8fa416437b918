"""The global model as Flower arrays: seeded from the config, and evaluated on the
held-out test split. Every family that has a global model (horizontal, swarm) and the
audits start from the same :func:`initial_arrays`."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

from fedpriv.config import ExperimentConfig
from fedpriv.data.federated import FederatedData
from fedpriv.errors import ConfigError
from fedpriv.training import evaluate


def initial_arrays(config: ExperimentConfig, data: FederatedData) -> ArrayRecord:
    """The seeded initial global model; a model that does not fit the data is a ConfigError."""
    torch.manual_seed(config.seed)
    try:
        model = config.model.build(data.dataset.input_shape, data.dataset.num_classes)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    model = config.privacy.prepare_model(model)
    return ArrayRecord(model.state_dict())


def evaluate_arrays(
    config: ExperimentConfig, data: FederatedData, arrays: ArrayRecord
) -> dict[str, float]:
    """Accuracy and loss of a global model on the held-out test split."""
    model = config.privacy.prepare_model(
        config.model.build(data.dataset.input_shape, data.dataset.num_classes)
    )
    model.load_state_dict(arrays.to_torch_state_dict())
    return evaluate(model, data.dataset.x_test, data.dataset.y_test)
