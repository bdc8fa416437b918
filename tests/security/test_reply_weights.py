"""A client that lies about its aggregation weight (``num-examples``) must not poison or
take over the global model: the server's reply screen refuses non-finite, absurd and
changing weights, and NaN/Inf values, and the round goes on with the honest replies.

The adversary is one client of the federation; the server's aggregate is Flower's own
FedAvg (plaintext) or fedpriv's CKKS sum (real TenSEAL contexts).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedpriv.crypto.base import PlainAggregator
from fedpriv.crypto.client import CkksClientMod
from fedpriv.crypto.records import Layout
from fedpriv.crypto.scheme import Ckks
from fedpriv.strategies.horizontal import HORIZONTAL_STRATEGIES

pytestmark = pytest.mark.usefixtures("task_identity")

GLOBAL = ArrayRecord({"w": Array(np.zeros(6, np.float32))})
HONEST = {1: (np.full(6, 1.0, np.float32), 10), 2: (np.full(6, 3.0, np.float32), 30)}


def reply(node: int, values: np.ndarray, weight: object) -> Message:
    """A train reply from ``node`` (as Flower builds one: a reply to the server's message)."""
    request = Message(RecordDict(), dst_node_id=node, message_type="train")
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(values)}),
            "metrics": MetricRecord({"num-examples": weight, "train-loss": 0.5}),  # type: ignore[dict-item]
        }
    )
    return Message(content, reply_to=request)


def fedavg_round(replies: list[Message]) -> tuple[np.ndarray | None, list[str]]:
    """One round of the plaintext path: screen each reply, aggregate the rest with
    Flower's FedAvg. Returns the new global values and the rejection reasons."""
    flower = HORIZONTAL_STRATEGIES.create({"name": "fedavg"}).build()
    aggregator = PlainAggregator(flower, "num-examples")
    accepted, reasons = [], []
    for r in replies:
        if (reason := aggregator.check(r, GLOBAL)) is None:
            accepted.append(r)
        else:
            reasons.append(reason)
    result = aggregator.aggregate(1, accepted, GLOBAL, len(replies))
    return (None if result.arrays is None else result.arrays["w"].numpy()), reasons


def honest_replies() -> list[Message]:
    return [reply(node, values, weight) for node, (values, weight) in HONEST.items()]


HONEST_MEAN = np.average([v for v, _ in HONEST.values()], axis=0, weights=[10, 30])


@pytest.mark.parametrize(
    "weight",
    [math.inf, 1e300, -5, 0, 2.5, math.nan],
    ids=["inf", "1e300", "negative", "zero", "fraction", "nan"],
)
def test_a_forged_example_count_is_rejected_and_the_model_stays_the_honest_mean(weight):
    """Before the fix, ``num-examples=inf`` passed the check and FedAvg's weighted mean
    became NaN (inf/inf); 1e300 passed too and made the mean the attacker's model."""
    attacker = [reply(3, np.full(6, 100.0, np.float32), weight)]
    if weight == 1e300:
        attacker.append(reply(4, np.full(6, 100.0, np.float32), weight))
    model, reasons = fedavg_round(honest_replies() + attacker)
    assert len(reasons) == len(attacker)
    assert all(f"'num-examples'={weight!r}" in reason for reason in reasons), reasons
    assert model is not None and np.isfinite(model).all()
    np.testing.assert_allclose(model, HONEST_MEAN, rtol=1e-6)


def test_a_client_cannot_raise_its_weight_after_its_first_reply():
    """A client declares its real count first, then claims a huge one to take the round
    over: an honest client's data is fixed for a run, so a changed count is refused."""
    flower = HORIZONTAL_STRATEGIES.create({"name": "fedavg"}).build()
    aggregator = PlainAggregator(flower, "num-examples")
    values = np.full(6, 100.0, np.float32)
    assert aggregator.check(reply(3, values, 20), GLOBAL) is None  # round 1: its real count
    reason = aggregator.check(reply(3, values, 10**9), GLOBAL)  # round 2: a takeover
    assert reason is not None and "1000000000" in reason and "20" in reason
    assert aggregator.check(reply(3, values, 20), GLOBAL) is None  # its real count still is


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_the_update_itself_is_rejected(bad):
    values = np.full(6, 1.0, np.float32)
    values[2] = bad
    model, reasons = fedavg_round([*honest_replies(), reply(3, values, 10)])
    assert reasons == ["array 'w' holds NaN or Inf"]
    np.testing.assert_allclose(model, HONEST_MEAN, rtol=1e-6)


def test_the_ckks_server_refuses_an_infinite_weight_it_would_divide_the_sum_by():
    """Under CKKS the server cannot see the values, but it adds the plaintext weights:
    an infinite one would turn every client's decrypted model into zeros."""
    spec = Ckks()
    keys = spec.make_keys()
    layout = Layout.of(GLOBAL)
    aggregator = spec.aggregator(
        HORIZONTAL_STRATEGIES.create({"name": "fedavg"}).build(),
        weight_key="num-examples",
        strategy=HORIZONTAL_STRATEGIES.create({"name": "fedavg"}),
        layout=layout,
        public=keys.public,
    )
    mod = CkksClientMod(
        spec.params,
        keys.secret,
        strategy=HORIZONTAL_STRATEGIES.create({"name": "fedavg"}),
        layout=layout,
        weight_key="num-examples",
        num_clients=2,
        workers=1,
        verify=False,
    )
    request = Message(RecordDict({"arrays": GLOBAL}), dst_node_id=5, message_type="train")
    encrypted = mod(request, None, lambda msg, ctx: reply(5, np.ones(6, np.float32), 10))
    assert aggregator.check(encrypted, GLOBAL) is None
    encrypted.content["metrics"]["num-examples"] = math.inf  # the client lies after encrypting
    reason = aggregator.check(encrypted, GLOBAL)
    assert reason is not None and "'num-examples'=inf" in reason
