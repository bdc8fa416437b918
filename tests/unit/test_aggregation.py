"""Server-side aggregation against independent computations, and reply checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from aggregation_inputs import SHAPES, client_models, reply
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedpriv.records import check_update, payload_nbytes
from fedpriv.strategies.horizontal import HORIZONTAL_STRATEGIES

pytestmark = pytest.mark.usefixtures("task_identity")


def aggregate(name: str, models, weights, **params) -> dict[str, np.ndarray]:
    flower = HORIZONTAL_STRATEGIES.create({"name": name, **params}).build()
    replies = [reply(m, w, i) for i, (m, w) in enumerate(zip(models, weights, strict=True))]
    arrays, _ = flower.aggregate_train(1, replies)
    return {k: v.numpy() for k, v in arrays.items()}


def test_fedavg_equals_hand_computed_example_weighted_mean():
    models, weights = client_models(3), [10, 30, 60]
    got = aggregate("fedavg", models, weights)
    # Flower accumulates in float32: values of order 1 carry ~1e-7 rounding per term.
    tol = {"rtol": 1e-6, "atol": 1e-6}
    for key in SHAPES:
        m = [model[key].astype(np.float64) for model in models]
        by_hand = (10 * m[0] + 30 * m[1] + 60 * m[2]) / 100
        np.testing.assert_allclose(got[key], by_hand, **tol)
        np.testing.assert_allclose(got[key], np.average(m, axis=0, weights=weights), **tol)


def test_fedavg_on_a_tiny_example_by_hand():
    models = [{"w": np.array([1.0, 2.0], np.float32)}, {"w": np.array([4.0, -1.0], np.float32)}]
    got = aggregate("fedavg", models, [1, 2])
    np.testing.assert_allclose(got["w"], [3.0, 0.0])


def test_fedmedian_and_trimmed_mean_match_numpy():
    models, weights = client_models(5), [1, 2, 3, 4, 5]
    median = aggregate("fedmedian", models, weights)
    trimmed = aggregate("fedtrimmedavg", models, weights, beta=0.2)
    for key in SHAPES:
        stack = np.stack([m[key] for m in models])
        np.testing.assert_allclose(median[key], np.median(stack, axis=0), rtol=1e-6, atol=1e-7)
        trimmed_by_hand = np.sort(stack, axis=0)[1:4].mean(axis=0)
        np.testing.assert_allclose(trimmed[key], trimmed_by_hand, rtol=1e-6, atol=1e-6)


def test_max_and_absmax_merge_element_wise():
    models = [
        {"w": np.array([1.0, -5.0, 2.0], np.float32)},
        {"w": np.array([-3.0, 4.0, 2.5], np.float32)},
    ]
    np.testing.assert_array_equal(aggregate("max", models, [1, 1])["w"], [1.0, 4.0, 2.5])
    np.testing.assert_array_equal(aggregate("absmax", models, [1, 1])["w"], [-3.0, -5.0, 2.5])


def test_krum_picks_the_model_closest_to_the_others():
    honest = [{"w": np.full(4, 1.0 + 0.01 * i, np.float32)} for i in range(4)]
    outlier = {"w": np.full(4, 50.0, np.float32)}
    got = aggregate("krum", [*honest, outlier], [1] * 5, num_malicious_nodes=1)
    assert np.all(np.abs(got["w"] - 1.0) < 0.05)


def test_fedavgm_without_momentum_is_fedavg():
    models, weights = client_models(3), [5, 5, 10]
    flower = HORIZONTAL_STRATEGIES.create(
        {"name": "fedavgm", "server_momentum": 0.0, "server_learning_rate": 1.0}
    ).build()
    start = ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in SHAPES.items()})

    class OneNodeGrid:  # configure_train only asks the grid for node ids
        def get_node_ids(self):
            return [0, 1, 2]

    list(flower.configure_train(1, start, ConfigRecord(), OneNodeGrid()))
    arrays, _ = flower.aggregate_train(
        1, [reply(m, w) for m, w in zip(models, weights, strict=True)]
    )
    expected = aggregate("fedavg", models, weights)
    for key in SHAPES:
        np.testing.assert_allclose(arrays[key].numpy(), expected[key], rtol=1e-5, atol=1e-6)


GLOBAL = ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in SHAPES.items()})


def good() -> dict[str, np.ndarray]:
    return {k: np.ones(s, np.float32) for k, s in SHAPES.items()}


@pytest.mark.parametrize(
    ("make_reply", "reason"),
    [
        (lambda: reply({**good(), "w": np.full((3, 4), np.nan, np.float32)}), "NaN or Inf"),
        (lambda: reply({**good(), "b": np.full(4, np.inf, np.float32)}), "NaN or Inf"),
        (lambda: reply({**good(), "w": np.ones((4, 3), np.float32)}), "expected float32[3, 4]"),
        (lambda: reply({**good(), "b": np.ones(4, np.float64)}), "is float64"),
        (lambda: reply({"w": np.ones((3, 4), np.float32)}), "missing ['b']"),
        (lambda: reply({**good(), "extra": np.ones(1, np.float32)}), "unexpected ['extra']"),
        (lambda: reply(good(), num_examples=0), "must be a positive number"),
        (
            lambda: Message(
                RecordDict({"metrics": MetricRecord({"num-examples": 1})}),
                dst_node_id=1,
                message_type="train",
            ),
            "expected one ArrayRecord",
        ),
    ],
)
def test_bad_replies_are_rejected_with_a_reason(make_reply, reason):
    found = check_update(make_reply(), GLOBAL)
    assert found is not None and reason in found


def test_arrays_whose_bytes_disagree_with_their_metadata_are_rejected():
    forged = reply(good())
    real = forged.content["arrays"]["w"]
    # Keep the declared dtype and shape, but ship float64 bytes of another shape.
    other = Array(np.ones((2, 3), np.float64))
    forged.content["arrays"]["w"] = Array(
        dtype=real.dtype, shape=real.shape, stype=real.stype, data=other.data
    )
    found = check_update(forged, GLOBAL)
    assert found is not None and "bytes are not a float32[3, 4] array" in found


def test_error_replies_are_rejected():
    request = Message(RecordDict(), dst_node_id=1, message_type="train")
    failed = Message(Error(code=0, reason="out of memory"), reply_to=request)
    assert check_update(failed, GLOBAL) == "client error: out of memory"


def test_good_reply_passes_and_payload_is_counted():
    ok = reply(good(), num_examples=3)
    assert check_update(ok, GLOBAL) is None
    # Flower ships numpy arrays as .npy bytes (header included); metrics as 8-byte scalars.
    npy_bytes = 0
    for array in good().values():
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        npy_bytes += len(buffer.getvalue())
    assert payload_nbytes(ok.content) == npy_bytes + 2 * 8


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_fedopt_aggregates_keep_the_global_models_dtypes(name):
    """Flower's FedOpt computes in float64; the global model must stay float32."""
    from fedpriv.records import cast_like

    flower = HORIZONTAL_STRATEGIES.create({"name": name}).build()
    start = ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in SHAPES.items()})

    class Grid:
        def get_node_ids(self):
            return [0, 1]

    list(flower.configure_train(1, start, ConfigRecord(), Grid()))
    arrays, _ = flower.aggregate_train(1, [reply(good(), 1, 0), reply(good(), 1, 1)])
    kept = cast_like(arrays, start)
    assert {kept[k].dtype for k in SHAPES} == {"float32"}
    assert check_update(reply({k: v.numpy() for k, v in kept.items()}), kept) is None


def test_a_clients_own_array_names_are_taken_by_position_when_shapes_match():
    """A plain Flower client replies under its model's own names, in the same order."""
    own = reply({"fc.weight": np.ones((3, 4), np.float32), "fc.bias": np.ones(4, np.float32)})
    assert check_update(own, GLOBAL) is None
    assert list(own.content["arrays"]) == list(GLOBAL)
    swapped = reply({"fc.bias": np.ones(4, np.float32), "fc.weight": np.ones((3, 4), np.float32)})
    assert "array names differ" in str(check_update(swapped, GLOBAL))  # order matters
