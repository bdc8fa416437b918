"""Vertical pieces without Flower: PSI, the feature and entity split, node state."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from nacl import bindings as sodium

from fedpriv import ConfigError, load_config
from fedpriv.config import from_mapping
from fedpriv.crypto import psi
from fedpriv.data.vertical import feature_views, holders, join, take, vertical_tables
from fedpriv.strategies.vertical.model import (
    SplitModel,
    build_bottom,
    epoch_batches,
    optimizer,
    restore,
    save,
    train_centrally,
)

# -- private set intersection -------------------------------------------------------------


def ring_psi(sets: list[list[str]]) -> tuple[list[np.ndarray], list[bytes], dict]:
    """The protocol the coordinator runs, in one process: what each party ends with,
    the keys, and what every party and the coordinator saw on the way."""
    keys = [psi.new_key() for _ in sets]
    points = {p: psi.mask_ids(ids, keys[p]) for p, ids in enumerate(sets)}
    seen: dict = {p: [] for p in range(len(sets))}
    for hop in range(1, len(sets)):
        for owner in range(len(sets)):
            holder = (owner + hop) % len(sets)
            seen[holder].append(points[owner])
            points[owner] = psi.remask(points[owner], keys[holder])
    seen["coordinator"] = [points[p] for p in range(len(sets))]
    return psi.align([psi.as_elements(points[p]) for p in range(len(sets))]), keys, seen


def test_psi_finds_exactly_the_common_ids_in_one_order():
    everyone = [f"patient-{i}" for i in range(40)]
    sets = [[*everyone[:30], "only-a"], [*everyone[5:], "only-b"], [*everyone[::-1][2:], "only-c"]]
    for ids in sets:
        np.random.default_rng(len(ids)).shuffle(ids)
    positions, _, _ = ring_psi(sets)
    common = set(sets[0]) & set(sets[1]) & set(sets[2])
    found = [[ids[r] for r in rows] for ids, rows in zip(sets, positions, strict=True)]
    assert set(found[0]) == common and len(found[0]) == len(common) == 25
    assert found[0] == found[1] == found[2]  # every party lists the members in the same order


def test_psi_hides_non_members_from_parties_and_coordinator():
    sets = [["alice", "bob", "carol"], ["bob", "carol", "dave"]]
    positions, keys, seen = ring_psi(sets)
    assert [sorted(sets[p][r] for r in positions[p]) for p in (0, 1)] == [["bob", "carol"]] * 2

    def hashed(entity: str) -> bytes:  # H(id): what anyone can compute for a guessed ID
        digest = hashlib.sha512(psi.DOMAIN + entity.encode()).digest()[:32]
        return sodium.crypto_core_ed25519_from_uniform(digest)

    guesses = {hashed(e) for e in ("alice", "bob", "carol", "dave")}
    for party in (0, 1):
        received = {row for points in seen[party] for row in psi.as_elements(points)}
        own_view = set(psi.as_elements(psi.mask_ids(sets[party], keys[party])))
        # What a party receives matches nothing it can compute: not the IDs' hashes, not
        # its own masked IDs, not the received points masked again with its own key.
        assert received.isdisjoint(guesses | own_view)
        remasked = {
            row
            for points in seen[party]
            for row in psi.as_elements(psi.remask(points, keys[party]))
        }
        assert remasked.isdisjoint(own_view)
    final = {row for points in seen["coordinator"] for row in psi.as_elements(points)}
    assert final.isdisjoint(guesses)  # the coordinator cannot test a guessed ID either
    assert len(final) == 4  # it learns set sizes and how many are shared, nothing more


def test_psi_rejects_points_outside_the_prime_order_subgroup_and_duplicates():
    good = psi.mask_ids(["a", "b"], psi.new_key())
    bad = good.copy()
    bad[1] = np.frombuffer(bytes([1]) + bytes(31), np.uint8)  # the identity: small order
    with pytest.raises(ValueError, match="row 1 is not a valid point"):
        psi.remask(bad, psi.new_key())
    with pytest.raises(ValueError, match=r"\(n, 32\) uint8"):
        psi.remask(good[:, :16], psi.new_key())
    with pytest.raises(ValueError, match="party 1 submitted 1 duplicate"):
        psi.align([["a", "b"], ["a", "a"]])


# -- features and entities -----------------------------------------------------------------


def test_column_and_random_splits_partition_the_features():
    contiguous = feature_views((30,), 3, "columns")
    assert contiguous == [tuple(range(0, 10)), tuple(range(10, 20)), tuple(range(20, 30))]
    shuffled = feature_views((30,), 3, "random", seed=4)
    assert sorted(i for view in shuffled for i in view) == list(range(30))
    assert shuffled != contiguous
    explicit = feature_views((30,), 2, "columns", columns=[[0, 5], [7]])
    assert explicit == [(0, 5), (7,)]
    x = np.arange(2 * 30, dtype=np.float32).reshape(2, 30)
    np.testing.assert_array_equal(take(x, explicit[0]), x[:, [0, 5]])


def test_image_splits_give_each_party_a_window_of_every_image():
    x = np.arange(3 * 1 * 8 * 8, dtype=np.float32).reshape(3, 1, 8, 8)
    left, right = (take(x, v) for v in feature_views((1, 8, 8), 2, "halves"))
    assert left.shape == right.shape == (3, 1, 8, 4)
    np.testing.assert_array_equal(np.concatenate([left, right], axis=3), x)
    quads = [take(x, v) for v in feature_views((1, 8, 8), 4, "quadrants")]
    assert all(q.shape == (3, 1, 4, 4) for q in quads)
    np.testing.assert_array_equal(quads[3], x[:, :, 4:, 4:])


@pytest.mark.parametrize(
    "shape,parties,split,columns,message",
    [
        ((1, 8, 8), 3, "halves", None, "needs vertical.parties=2"),
        ((30,), 2, "halves", None, "splits C×H×W images"),
        ((30,), 2, "columns", [[0], [30]], r"out-of-range \[30\]"),
        ((30,), 3, "columns", [[0], [1]], "one per party"),
        ((4,), 5, "columns", None, "exceeds the 4 features"),
    ],
)
def test_bad_splits_are_refused_with_the_reason(shape, parties, split, columns, message):
    with pytest.raises(ConfigError, match=message):
        feature_views(shape, parties, split, columns)


def test_overlap_sets_who_holds_each_training_entity():
    held = holders(1000, 3, 0.7, seed=1)
    everyone = held.all(axis=0)
    assert everyone.sum() == 700
    assert held.sum(axis=0).min() >= 0 and not held[:, ~everyone].all(axis=0).any()
    assert holders(50, 2, 1.0, seed=1).all()


def test_party_tables_hold_their_own_rows_and_join_on_ids():
    config = load_config(["family=vertical", "data=wine", "vertical.parties=3"])
    dataset, tables = vertical_tables(config.data, 3, "columns", None, 0.8, 0)
    assert tables[0].y is not None and tables[1].y is None and tables[2].y is None
    assert tables[0].ids != tables[1].ids  # each party has its own row order
    joined = join(tables)
    n_train = len(dataset.y_train)
    assert len(joined.ids_train) == round(0.8 * n_train) and len(joined.ids_test) == len(
        dataset.y_test
    )
    x = np.concatenate(joined.train, axis=1)
    index = {i: r for r, i in enumerate(tables[1].ids)}
    row = index[joined.ids_train[0]]
    np.testing.assert_array_equal(joined.train[1][0], tables[1].x[row])
    assert x.shape[1] == dataset.x_train.shape[1]


# -- state, batches ----------------------------------------------------------------------


def test_saved_state_resumes_sgd_with_momentum_exactly():
    config = load_config(["family=vertical", "data=wine"])
    x, target = torch.randn(8, 6), torch.randn(8, 16)

    def step(model, opt):
        opt.zero_grad()
        ((model(x) - target) ** 2).mean().backward()
        opt.step()

    straight = build_bottom(config, 1, (6,))
    opt = optimizer(straight, config.train)
    step(straight, opt)
    step(straight, opt)
    resumed = build_bottom(config, 1, (6,))
    opt = optimizer(resumed, config.train)
    step(resumed, opt)
    record = save(resumed, opt)
    fresh = build_bottom(config, 1, (6,))  # a new process: only the record survives
    fresh_opt = optimizer(fresh, config.train)
    restore(fresh, fresh_opt, record)
    step(fresh, fresh_opt)
    for a, b in zip(straight.parameters(), fresh.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_epoch_batches_cover_every_entity_once_and_differ_by_epoch():
    first, second = epoch_batches(100, 32, 0, 1), epoch_batches(100, 32, 0, 2)
    assert [len(b) for b in first] == [32, 32, 32, 4]
    assert sorted(np.concatenate(first)) == list(range(100))
    assert not np.array_equal(np.concatenate(first), np.concatenate(second))


def test_central_baseline_learns_and_uses_the_split_model():
    config = load_config(["family=vertical", "data=breast_cancer", "vertical.parties=3"])
    _, tables = vertical_tables(config.data, 3, "columns", None, 1.0, 0)
    joined = join(tables)
    model = SplitModel(config, [p.shape[1:] for p in joined.train], 2)
    assert len(model.bottoms) == 3 and model.rule.name == "concat"
    history = train_centrally(
        config, joined.train, joined.y_train, joined.test, joined.y_test, 2, epochs=2
    )
    assert history[-1]["accuracy"] > 0.9  # majority class: 0.63


# -- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["privacy=dp_sgd"], "not available with family=vertical"),
        (["crypto=ckks"], "needs strategy.merge=sum or mean"),
        (["num_clients=3"], "must equal vertical.parties=2"),
        (["vertical.split=quadrants"], "needs vertical.parties=4"),
        (["strategy.merge=median"], "must be one of: concat, sum, mean, max, absmax"),
        (["vertical.overlap=0"], r"overlap=0.0 must be in \(0, 1\]"),
        (["strategy=fedavg"], "choose one of: splitnn"),
    ],
)
def test_vertical_misconfigurations_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(["family=vertical", *overrides])


def test_an_older_run_with_vertical_merge_says_what_to_write_now(tmp_path):
    mapping = load_config(["family=vertical"]).to_dict()
    mapping["strategy"] = {"name": "splitnn"}
    mapping["vertical"].update(merge="sum", embedding_dim=8, top_hidden=[32, 16])
    with pytest.raises(ConfigError) as error:
        from_mapping(mapping)
    assert error.value.problems == [
        "vertical.merge, vertical.embedding_dim, vertical.top_hidden moved to the split "
        "model's own parameters: write strategy.merge=sum strategy.embedding_dim=8 "
        "strategy.top_hidden=[32,16]"
    ]
    written = " ".join(error.value.problems[0].split("write ")[1:]).split()
    config = load_config(["family=vertical", *written])
    assert (config.strategy.merge, config.strategy.embedding_dim) == ("sum", 8)
    assert config.strategy.top_hidden == (32, 16)


def test_vertical_settings_follow_the_family():
    config = load_config(["family=vertical", "vertical.parties=3", "data=wine"])
    assert config.num_clients == 3 and config.strategy.name == "splitnn"
    assert config.to_dict()["vertical"]["parties"] == 3
    assert "vertical" not in load_config([]).to_dict()

    horizontal = load_config([]).to_dict()
    with pytest.raises(ConfigError, match=r"vertical\.\* settings apply to family=vertical"):
        from_mapping({**horizontal, "vertical": {"parties": 2}})
