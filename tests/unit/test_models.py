"""Models: shapes, and validity for Opacus (no BatchNorm, per-sample gradients defined)."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator

from fedpriv import ConfigError
from fedpriv.models import MODELS


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
def test_models_fit_images_and_are_valid_for_opacus(name, shape):
    model = MODELS.create({"name": name}).build(shape, 10)
    assert model(torch.zeros(3, *shape)).shape == (3, 10)
    assert ModuleValidator.validate(model, strict=False) == []


def test_flat_models_on_tabular_data_and_cnn_refuses_it():
    for name in ("logreg", "mlp"):
        assert MODELS.create({"name": name}).build((13,), 3)(torch.zeros(2, 13)).shape == (2, 3)
    with pytest.raises(ValueError, match="needs image inputs"):
        MODELS.create({"name": "cnn"}).build((13,), 3)


def test_model_parameters_are_checked():
    with pytest.raises(ConfigError, match=r"model.groups=3 must be >= 1 and divide"):
        MODELS.create({"name": "cnn", "groups": 3}, "model")
    with pytest.raises(ConfigError, match=r"model.hidden=\(0,\)"):
        MODELS.create({"name": "mlp", "hidden": [0]}, "model")
