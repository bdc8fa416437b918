"""Bad input never crashes a round: replies are screened before any family reads them,
and config and record decoding, fuzzed, raise nothing but fedpriv's own errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from hypothesis import example, given
from hypothesis import strategies as st

from fedpriv import ConfigError, from_mapping
from fedpriv.records import check_update
from fedpriv.results import RunDirectory
from fedpriv.runtime.context import RunContext

pytestmark = pytest.mark.usefixtures("task_identity")


def request(message_id: str, node: int) -> Message:
    """A sent message with the ID the grid gave it on push."""
    message = Message(RecordDict(), dst_node_id=node, message_type="train")
    message.metadata.__dict__["_message_id"] = message_id
    return message


def reply_to(message: Message, floats: int = 4) -> Message:
    arrays = ArrayRecord({"w": Array(np.zeros(floats, np.float32))})
    return Message(RecordDict({"arrays": arrays}), reply_to=message)


def test_replies_to_other_exchanges_duplicates_and_oversized_payloads_are_rejected(
    make_config, tmp_path
):
    ctx = RunContext(make_config("engine.max_reply_mb=0.001"), RunDirectory(tmp_path))
    first, second = request("m1", 1), request("m2", 2)
    honest = reply_to(first)
    stale = reply_to(request("m0", 3))  # a message an earlier round sent
    replies = [honest, reply_to(first), stale, reply_to(second, floats=1000)]
    kept = ctx.exchange.screen(replies, sent={"m1", "m2"})
    assert kept == [honest]
    reasons = [r["reason"] for r in ctx.exchange.rejected]
    assert reasons[0] == "duplicate reply to message m1"
    assert reasons[1] == "reply to message m0, which this exchange did not send"
    assert reasons[2].startswith("payload of 0.0 MB exceeds engine.max_reply_mb=0.001")
    assert sum(ctx.exchange.traffic.up.values()) > 4000  # every reply's, kept or not


GLOBAL = ArrayRecord(
    {"w": Array(np.zeros((2, 3), np.float32)), "b": Array(np.zeros(3, np.float32))}
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
    st.text(max_size=8),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
groups = ["data", "partition", "model", "strategy", "privacy", "crypto", "engine", "train",
          "selection", "adversary", "family", "num_clients", "rounds", "seed"]  # fmt: skip


@given(st.dictionaries(st.sampled_from([*groups, "bogus"]), values, max_size=8))
@example({"data": {"name": []}})  # an unhashable name was a TypeError, found by Hypothesis
@example({"strategy": {"name": []}, "family": {"name": {}}, "privacy": {"name": [1]}})
def test_config_decoding_raises_only_clear_config_errors(mapping):
    try:
        from_mapping(mapping)
    except ConfigError as error:
        assert error.problems and all(isinstance(p, str) and p for p in error.problems)


@given(
    st.dictionaries(st.sampled_from(["w", "b", "x"]), st.tuples(
        st.sampled_from([np.float32, np.float64, np.int64, np.uint8]),
        st.lists(st.integers(0, 4), max_size=3),
        st.sampled_from([0.0, 1.0, np.nan, np.inf, -1e30]),
    ), max_size=3),
    st.one_of(
        st.none(), st.integers(-3, 100), st.floats(allow_nan=True),
        st.sampled_from([math.inf, -math.inf, 2.0**60, 2**53, 2.5, 7.0]), st.text(max_size=3),
    ),
    st.booleans(),
)  # fmt: skip
@example({"w": (np.float32, [2, 3], 1.0), "b": (np.float32, [3], 1.0)}, math.inf, False)
def test_record_checks_say_why_and_never_raise(arrays, weight, extra_metrics):
    with np.errstate(invalid="ignore"):  # NaN and Inf cast to integer dtypes
        record = ArrayRecord(
            {k: Array(np.full(s, fill).astype(dtype)) for k, (dtype, s, fill) in arrays.items()}
        )
    content = RecordDict({"arrays": record})
    if isinstance(weight, str):  # a weight of the wrong type, in the wrong kind of record
        content["metrics"] = ConfigRecord({"num-examples": weight})
    else:
        content["metrics"] = MetricRecord({} if weight is None else {"num-examples": weight})
    if extra_metrics:
        content["more"] = MetricRecord({"x": 1.0})
    reason = check_update(Message(content, dst_node_id=1, message_type="train"), GLOBAL)
    well_formed = (
        set(arrays) == {"w", "b"}
        and all(np.dtype(d) == np.float32 for d, _, _ in arrays.values())
        and tuple(arrays["w"][1]) == (2, 3)
        and tuple(arrays["b"][1]) == (3,)
        and all(np.isfinite(f) for _, _, f in arrays.values())
        and isinstance(weight, int | float)
        and not isinstance(weight, bool)
        and math.isfinite(weight)  # inf would make the weighted mean NaN
        and 0 < weight <= 2**53  # a count of examples: positive, whole, not absurd
        and float(weight).is_integer()
        and not extra_metrics
    )
    assert (reason is None) == well_formed, reason
