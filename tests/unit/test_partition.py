"""Partitioners: property tests over random label vectors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpriv import ConfigError
from fedpriv.data import PARTITIONS
from fedpriv.data.partition import label_histograms

DISJOINT = ["iid", "dirichlet", "shards", "quantity_skew"]


@st.composite
def labels_and_clients(draw):
    num_classes = draw(st.integers(2, 10))
    n = draw(st.integers(40, 400))
    labels = np.array(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    clients = draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**31))
    return labels, clients, seed


def make(name: str, **params):
    return PARTITIONS.create({"name": name, **params})


@pytest.mark.parametrize("name", DISJOINT)
@settings(max_examples=40, deadline=None)
@given(case=labels_and_clients())
def test_every_sample_used_exactly_once(name, case):
    labels, clients, seed = case
    params = {"min_samples": 1, "alpha": 1.0} if name == "dirichlet" else {}
    parts = make(name, **params).split(labels, clients, seed)
    assert len(parts) == clients
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(len(labels)))


@pytest.mark.parametrize("name", [*DISJOINT, "replicate"])
@settings(max_examples=20, deadline=None)
@given(case=labels_and_clients())
def test_same_seed_same_parts_and_histograms_add_up(name, case):
    labels, clients, seed = case
    params = {"min_samples": 1} if name == "dirichlet" else {}
    spec = make(name, **params)
    first, second = spec.split(labels, clients, seed), spec.split(labels, clients, seed)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    hist = np.array(label_histograms(labels, first, int(labels.max()) + 1))
    assert (hist.sum(axis=1) == [len(p) for p in first]).all()


@settings(max_examples=30, deadline=None)
@given(case=labels_and_clients())
def test_iid_sizes_differ_by_at_most_one(case):
    labels, clients, seed = case
    sizes = [len(p) for p in make("iid").split(labels, clients, seed)]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=30, deadline=None)
@given(case=labels_and_clients(), min_samples=st.integers(1, 4))
def test_dirichlet_honours_min_samples(case, min_samples):
    labels, clients, seed = case
    spec = make("dirichlet", alpha=5.0, min_samples=min_samples)
    try:
        parts = spec.split(labels, clients, seed)
    except (
        ConfigError
    ) as error:  # a tight minimum may be unreachable: a clear error, not a bad split
        assert "min_samples" in str(error)
        assert len(labels) < 4 * min_samples * clients  # only when there is little slack
        return
    assert min(len(p) for p in parts) >= min_samples


def test_dirichlet_small_alpha_skews_labels():
    labels = np.repeat(np.arange(10), 100)
    skewed = make("dirichlet", alpha=0.05, min_samples=1).split(labels, 10, 0)
    near_iid = make("dirichlet", alpha=1000.0, min_samples=1).split(labels, 10, 0)

    def mean_classes(parts):  # classes holding >= 5 % of a client's samples
        hist = np.array(label_histograms(labels, parts, 10))
        return np.mean((hist / hist.sum(axis=1, keepdims=True) >= 0.05).sum(axis=1))

    assert mean_classes(skewed) < 4 < mean_classes(near_iid)


def test_dirichlet_impossible_min_samples_is_a_clear_error():
    labels = np.repeat(np.arange(2), 10)
    with pytest.raises(ConfigError, match="min_samples=5 × num_clients=10 exceeds the 20"):
        make("dirichlet", min_samples=5).split(labels, 10, 0)


@settings(max_examples=30, deadline=None)
@given(case=labels_and_clients(), k=st.integers(1, 3))
def test_shards_deal_k_equal_label_sorted_shards(case, k):
    labels, clients, seed = case
    if clients * k > len(labels):
        return
    parts = make("shards", classes_per_client=k).split(labels, clients, seed)
    shard = len(labels) / (clients * k)
    for part in parts:
        assert k * np.floor(shard) <= len(part) <= k * np.ceil(shard)


def test_shards_on_balanced_labels_give_k_classes():
    labels = np.repeat(np.arange(10), 60)
    parts = make("shards", classes_per_client=2).split(labels, 10, 3)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)


@settings(max_examples=30, deadline=None)
@given(case=labels_and_clients(), exponent=st.floats(0.0, 3.0))
def test_quantity_skew_follows_the_power_law(case, exponent):
    labels, clients, seed = case
    if 2 * clients > len(labels):
        return
    parts = make("quantity_skew", exponent=exponent).split(labels, clients, seed)
    sizes = np.sort([len(p) for p in parts])[::-1]
    assert sizes.min() >= 2
    expected = np.arange(1, clients + 1) ** -exponent
    expected = 2 + expected / expected.sum() * (len(labels) - 2 * clients)
    assert np.all(np.abs(sizes - expected) <= 1.0 + 1e-9)


@settings(max_examples=20, deadline=None)
@given(case=labels_and_clients())
def test_replicate_gives_everyone_everything_in_their_own_order(case):
    labels, clients, seed = case
    parts = make("replicate").split(labels, clients, seed)
    for part in parts:
        assert np.array_equal(np.sort(part), np.arange(len(labels)))
    if clients > 1 and len(labels) > 3:
        assert not np.array_equal(parts[0], parts[1])
