"""Merge rules against independent numpy computations, their gradients and their sums."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from flwr.server.strategy.aggregate import aggregate, aggregate_median, aggregate_trimmed_avg
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedpriv import ConfigError
from fedpriv.merge import MERGE_RULES, merge_choices, merge_rule

#: Contributions along axis 0: 1-7 of them, each a small 1-d or 2-d array. Values are
#: drawn from a short list, so ties (equal values, ``x`` and ``-x``) come up often.
stacks = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=2, max_dims=3, max_side=7),
    elements=st.sampled_from([-3.0, -1.5, -0.25, 0.0, 0.5, 1.5, 3.0, 7.0]),
)


def absmax_by_loop(stack: np.ndarray) -> np.ndarray:
    """Per element, the first contribution whose magnitude is the largest."""
    out = np.empty(stack.shape[1:])
    for index in np.ndindex(*stack.shape[1:]):
        column = [stack[(k, *index)] for k in range(len(stack))]
        biggest = max(abs(v) for v in column)
        out[index] = next(v for v in column if abs(v) == biggest)
    return out


def trimmed_by_hand(stack: np.ndarray, trim: float) -> np.ndarray:
    """Per element: sort, cut int(trim·n) values at each end, average the rest."""
    cut = int(trim * len(stack))
    out = np.empty(stack.shape[1:])
    for index in np.ndindex(*stack.shape[1:]):
        column = sorted(stack[(k, *index)] for k in range(len(stack)))
        kept = column[cut : len(column) - cut]
        out[index] = sum(kept) / len(kept)
    return out


#: Each rule's oracle, from its definition (weights: positive example counts).
ORACLES = {
    "sum": lambda s, w: functools.reduce(np.add, s),
    "mean": lambda s, w: np.mean(s, axis=0),
    "weighted_mean": lambda s, w: np.average(s, axis=0, weights=w),
    "max": lambda s, w: np.maximum.reduce(s),
    "absmax": lambda s, w: absmax_by_loop(s),
    "coordinate_median": lambda s, w: np.median(s, axis=0),
    "trimmed_mean": lambda s, w: trimmed_by_hand(s, 0.1),
    "concat": lambda s, w: np.concatenate(list(s), axis=-1),
}


def test_every_rule_has_an_oracle():
    assert sorted(ORACLES) == MERGE_RULES.names()


@pytest.mark.parametrize("name", sorted(ORACLES))
@given(stack=stacks, data=st.data())
def test_each_rule_matches_numpy(name, stack, data):
    weights = data.draw(st.lists(st.integers(1, 50), min_size=len(stack), max_size=len(stack)))
    got = merge_rule(name).numpy(stack, weights)
    np.testing.assert_allclose(got, ORACLES[name](stack, weights), rtol=1e-12, atol=1e-12)
    assert got.shape[-1] == merge_rule(name).width(len(stack), stack.shape[-1])


@given(stack=stacks, trim=st.floats(0.0, 0.49))
def test_trimmed_mean_cuts_the_fraction_it_is_given(stack, trim):
    got = merge_rule("trimmed_mean", trim=trim).numpy(stack)
    np.testing.assert_allclose(got, trimmed_by_hand(stack, trim), rtol=1e-12, atol=1e-12)


def test_absmax_ties_go_to_the_first_contribution():
    stack = np.array([[3.0, -3.0, 2.0, 0.0], [-3.0, 3.0, -2.5, -0.0], [1.0, 3.0, 2.5, 0.0]])
    np.testing.assert_array_equal(merge_rule("absmax").numpy(stack), [3.0, -3.0, -2.5, 0.0])


@pytest.mark.parametrize(
    "name,flower",
    [
        ("mean", lambda results: aggregate([(w, 1) for w, _ in results])),
        ("weighted_mean", aggregate),
        ("coordinate_median", aggregate_median),
        ("trimmed_mean", lambda results: aggregate_trimmed_avg(results, 0.2)),
    ],
)
def test_swarm_rules_give_flowers_numbers(name, flower):
    """The leader merged with Flower's aggregate functions before; results are unchanged."""
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(10, 50)).astype(np.float32)
    stack[3] += 100  # an outlier
    sizes = [int(n) for n in rng.integers(5, 50, size=10)]
    got = merge_rule(name, trim=0.2).numpy(stack, sizes)
    assert got.dtype == np.float32
    expected = flower([([row], n) for row, n in zip(stack, sizes, strict=True)])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["max", "absmax"])
def test_numpy_form_keeps_dtype_and_reads_read_only_arrays(name):
    stack = np.frombuffer(np.arange(-6, 6, dtype=np.float32).tobytes(), np.float32).reshape(3, 4)
    assert not stack.flags.writeable  # as Flower's Array.numpy() hands them over
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = merge_rule(name).numpy(stack)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ORACLES[name](stack.astype(np.float64), None))


# -- the torch form -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_torch_form_equals_numpy_form_and_passes_gradcheck(name):
    """Distinct values (no ties), so every rule is smooth where it is checked."""
    stack = np.random.default_rng(1).permutation(5 * 3 * 4).reshape(5, 3, 4) / 7.0 - 4.0
    weights = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    rule = merge_rule(name, trim=0.2)
    leaf = torch.tensor(stack, requires_grad=True)
    merged = rule.torch(leaf, torch.from_numpy(weights))
    np.testing.assert_array_equal(merged.detach().numpy(), rule.numpy(stack, weights))
    assert torch.autograd.gradcheck(lambda x: rule.torch(x, torch.from_numpy(weights)), (leaf,))


@pytest.mark.parametrize("name", ["concat", "sum", "mean", "max", "absmax"])
def test_gradients_route_to_the_contributions_as_numpy_says(name):
    """The split model's merges: autograd hands each party its share of the gradient."""
    rng = np.random.default_rng(3)
    parts = [rng.normal(size=(4, 5)).astype(np.float32) for _ in range(3)]
    leaves = [torch.from_numpy(p).requires_grad_() for p in parts]
    upstream = rng.normal(size=(4, 15 if name == "concat" else 5)).astype(np.float32)
    merged = merge_rule(name).torch(torch.stack(leaves))
    merged.backward(torch.from_numpy(upstream))
    stacked = np.stack(parts)
    if name == "concat":
        grads = np.split(upstream, 3, axis=1)
    elif name in ("sum", "mean"):
        grads = [upstream / (3 if name == "mean" else 1)] * 3
    else:
        winner = (stacked if name == "max" else np.abs(stacked)).argmax(0)
        grads = [np.where(winner == p, upstream, 0) for p in range(3)]
    for leaf, grad in zip(leaves, grads, strict=True):
        np.testing.assert_allclose(leaf.grad.numpy(), grad, rtol=1e-6)


# -- linear rules: computable from a sum -----------------------------------------------------


def test_exactly_the_sum_and_the_means_are_linear():
    linear = [n for n in MERGE_RULES.names() if MERGE_RULES.get(n).linear]
    assert linear == ["mean", "sum", "weighted_mean"]


@pytest.mark.parametrize("name", MERGE_RULES.names())
@given(stack=stacks, data=st.data())
def test_linear_rules_follow_from_the_weighted_sum(name, stack, data):
    """What encrypted aggregation delivers: sum(weight × contribution) and sum(weight)."""
    weights = np.array(
        data.draw(st.lists(st.integers(1, 9), min_size=len(stack), max_size=len(stack))), float
    )
    rule = merge_rule(name)
    scale = weights if rule.weighted else np.ones(len(stack))
    total = (stack * scale.reshape(-1, *(1,) * (stack.ndim - 1))).sum(0)
    if rule.linear:
        expected = rule.numpy(stack, weights)
        np.testing.assert_allclose(rule.from_sum(total, scale.sum()), expected, atol=1e-12)
        torch.testing.assert_close(
            rule.from_sum(torch.from_numpy(total), scale.sum()), torch.from_numpy(expected)
        )
    else:
        with pytest.raises(ValueError, match="linear rules: mean, sum, weighted_mean"):
            rule.from_sum(total, scale.sum())


# -- choosing rules by name ------------------------------------------------------------------


def test_unknown_rules_list_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown merge rule 'median'; choose one of: absmax, "):
        merge_rule("median")
    with pytest.raises(ConfigError, match="unknown merge rule 'median'"):
        merge_choices("mean", "median")


def test_a_rule_takes_the_settings_it_has_fields_for():
    assert merge_rule("mean", trim=0.3) == merge_rule("mean")
    assert merge_rule("trimmed_mean", trim=0.3).trim == 0.3
    assert merge_rule("trimmed_mean", trim=0.5).problems() == [("trim", "must be in [0, 0.5)")]
