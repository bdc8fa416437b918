"""partition=features: each client every sample but only its feature block, and the
server's merge that places the clients' input layers side by side."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedpriv import ConfigError, load_config
from fedpriv.data import PARTITIONS, federate
from fedpriv.strategies.horizontal.aggregators import input_layer_problem, inputs_side_by_side
from fedpriv.training import TrainConfig, train_local

FEATURES = ["partition=features", "num_clients=2", "data=digits", "model=mlp"]


def test_halves_give_every_client_every_row_and_its_own_half_of_each_image():
    config = load_config(FEATURES)
    data = federate(config.data, config.partition, 2, 0)
    x_all = data.dataset.x_train
    (x0, y0), (x1, y1) = data.client(0), data.client(1)
    assert np.array_equal(y0, data.dataset.y_train) and np.array_equal(y1, y0)
    assert np.array_equal(x0[..., :4], x_all[..., :4]) and not x0[..., 4:].any()
    assert np.array_equal(x1[..., 4:], x_all[..., 4:]) and not x1[..., :4].any()
    masks = np.stack(data.masks)
    assert masks.sum(0).tolist() == np.ones_like(masks[0], dtype=int).tolist()  # a partition


@pytest.mark.parametrize("clients", [3, 5])
def test_column_blocks_partition_the_flat_features(clients):
    masks = PARTITIONS.create({"name": "features", "blocks": "columns"}).feature_masks(
        (13,), clients, 0
    )
    assert np.array_equal(np.stack(masks).sum(0), np.ones(13, dtype=int))


def test_bad_feature_blocks_are_config_errors_that_name_the_value():
    with pytest.raises(ConfigError, match=r"partition\.blocks.*halves, quadrants, columns"):
        load_config(["partition=features", "partition.blocks=rows"])
    config = load_config(["partition=features", "num_clients=3", "data=digits"])
    with pytest.raises(ConfigError, match=r"blocks='halves' needs num_clients=2, got 3"):
        federate(config.data, config.partition, 3, 0)


def test_the_server_places_inputs_side_by_side_and_merges_the_rest_by_the_rule():
    rng = np.random.default_rng(0)
    models = [
        ArrayRecord({"w": Array(rng.normal(size=(3, 4))), "b": Array(rng.normal(size=3))})
        for _ in range(2)
    ]
    rule_made = ArrayRecord({"w": Array(np.zeros((3, 4))), "b": Array(np.full(3, 7.0))})
    owns = [np.array([True, True, False, False]), np.array([False, False, True, True])]
    merged = inputs_side_by_side(rule_made, list(zip(models, owns, strict=True)))
    expected = np.concatenate([models[0]["w"].numpy()[:, :2], models[1]["w"].numpy()[:, 2:]], 1)
    assert np.array_equal(merged["w"].numpy(), expected)
    assert np.array_equal(merged["b"].numpy(), np.full(3, 7.0))  # the rule's, untouched
    assert np.array_equal(rule_made["w"].numpy(), np.zeros((3, 4)))  # the input is not changed


def test_training_on_own_features_leaves_the_other_input_columns_as_received():
    """The premise of the side-by-side merge: a client's input weights for features it
    lacks (zeros) get no gradient, so they stay the global model's."""
    config = load_config([*FEATURES, "train.momentum=0.9"])
    data = federate(config.data, config.partition, 2, 0)
    model = config.model.build(data.dataset.input_shape, data.dataset.num_classes)
    before = model[1].weight.detach().clone()
    x, y = data.client(0)
    train_local(model, x, y, TrainConfig(local_epochs=1, batch_size=64, lr=0.1), seed=0)
    own = torch.from_numpy(data.masks[0].reshape(-1))
    after = model[1].weight.detach()
    assert torch.equal(after[:, ~own], before[:, ~own])
    assert not torch.equal(after[:, own], before[:, own])


def test_feature_partition_refuses_what_would_undo_or_hide_the_merge():
    with pytest.raises(ConfigError, match=r"crypto=ckks hides the models"):
        load_config([*FEATURES, "crypto=ckks"])
    with pytest.raises(ConfigError, match=r"privacy=central: .* would undo central DP"):
        load_config([*FEATURES, "privacy=central"])
    with pytest.raises(ConfigError, match=r"strategy=fedasync is asynchronous"):
        load_config([*FEATURES, "strategy=fedasync"])


def test_a_model_without_a_dense_input_layer_is_named():
    arrays = ArrayRecord({"conv": Array(np.zeros((4, 1, 3, 3), np.float32))})
    assert "use model=mlp or model=logreg" in str(input_layer_problem(arrays, 64))
    dense = ArrayRecord({"w": Array(np.zeros((4, 64), np.float32))})
    assert input_layer_problem(dense, 64) is None


@pytest.mark.parametrize(
    ("family", "fix"), [("swarm", "family=horizontal"), ("vertical", "vertical.split")]
)
def test_only_the_horizontal_family_takes_feature_blocks(family, fix):
    """A swarm's peers (or split learning's parties) would train on feature blocks without
    the horizontal server's side-by-side merge: refused, naming what to use instead."""
    with pytest.raises(ConfigError, match=rf"partition=features .*family={family}.*{fix}"):
        load_config([f"family={family}", "partition=features"])
