"""Datasets: bundled sets, IDX files, CSV/NPZ, and clear errors when data is missing."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from fedpriv import ConfigError, DataError, load_config
from fedpriv.data import DATASETS, read_idx, write_idx
from fedpriv.data.idx import parse_idx


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [("digits", (1, 8, 8), 10), ("breast_cancer", (30,), 2), ("wine", (13,), 3)],
)
def test_bundled_datasets_split_before_partitioning(name, shape, classes):
    data = DATASETS.create({"name": name, "test_fraction": 0.25}).load(seed=0)
    assert data.input_shape == shape and data.num_classes == classes
    n_train, n_test = len(data.y_train), len(data.y_test)
    assert abs(n_test / (n_train + n_test) - 0.25) < 0.01
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert set(np.unique(data.y_test)) == set(range(classes))  # stratified


def test_standardization_uses_training_statistics_only():
    data = DATASETS.create({"name": "wine"}).load(seed=1)
    assert np.allclose(data.x_train.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(data.x_train.std(axis=0), 1, atol=1e-4)
    assert not np.allclose(data.x_test.mean(axis=0), 0, atol=1e-3)


def test_synthetic_is_any_size_and_seeded():
    spec = DATASETS.create({"name": "synthetic", "num_samples": 5000, "num_classes": 3})
    a, b = spec.load(seed=4), spec.load(seed=4)
    assert len(a.y_train) + len(a.y_test) == 5000 and a.num_classes == 3
    assert np.array_equal(a.x_train, b.x_train)


def test_idx_round_trip_plain_and_gzipped(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "a", images)
    assert np.array_equal(read_idx(tmp_path / "a"), images)
    (tmp_path / "b.gz").write_bytes(gzip.compress((tmp_path / "a").read_bytes()))
    assert np.array_equal(read_idx(tmp_path / "b.gz"), images)


def test_idx_rejects_garbage_and_truncation():
    with pytest.raises(DataError, match="not an IDX file"):
        parse_idx(b"hello world")
    with pytest.raises(DataError, match="data bytes"):
        parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 9]) + b"abc")


def fake_mnist(directory, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            directory / f"{prefix}-images-idx3-ubyte",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))


def test_mnist_family_reads_from_config_path_and_env(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "given")
    data = DATASETS.create({"name": "mnist", "path": str(tmp_path / "given")}).load(seed=0)
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    fake_mnist(tmp_path / "env" / "fashion_mnist")
    monkeypatch.setenv("FEDPRIV_DATA_DIR", str(tmp_path / "env"))
    limited = DATASETS.create({"name": "fashion_mnist", "limit": 12}).load(seed=0)
    assert len(limited.y_train) == 12


@pytest.mark.parametrize("name", ["digits", "wine", "breast_cancer"])
def test_a_bundled_limit_keeps_a_training_subset_and_the_whole_test_split(name):
    """A study's "one device alone" baseline trains on ``data.limit`` samples: the first
    of the seed-shuffled training split, the same test split as the full set's."""
    full = DATASETS.create({"name": name}).load(seed=3)
    limited = DATASETS.create({"name": name, "limit": 40}).load(seed=3)
    assert len(limited.y_train) == 40
    np.testing.assert_array_equal(limited.y_train, full.y_train[:40])
    np.testing.assert_array_equal(limited.y_test, full.y_test)
    assert DATASETS.create({"name": name, "limit": 10**6}).load(seed=3).y_train.shape == (
        full.y_train.shape
    )
    with pytest.raises(ConfigError, match="limit"):
        DATASETS.create({"name": name, "limit": 0})


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDPRIV_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as caught:
        DATASETS.create({"name": "mnist"}).load(seed=0)
    message = str(caught.value)
    assert str(tmp_path / "nowhere") in message and "FEDPRIV_DATA_DIR" in message


def test_an_explicit_data_path_never_falls_back_to_another_copy(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "env" / "mnist")  # a copy where fedpriv would otherwise look
    monkeypatch.setenv("FEDPRIV_DATA_DIR", str(tmp_path / "env"))
    assert DATASETS.create({"name": "mnist"}).source_files()  # found without data.path
    with pytest.raises(DataError) as caught:
        DATASETS.create({"name": "mnist", "path": str(tmp_path / "typo")}).load(seed=0)
    message = str(caught.value)
    assert str(tmp_path / "typo") in message and str(tmp_path / "env") not in message


def test_csv_dataset(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    y = (x[:, 0] > 0).astype(int)
    file = tmp_path / "table.csv"
    rows = ["f1,target,f2,f3"] + [f"{a},{t},{b},{c}" for (a, b, c), t in zip(x, y, strict=True)]
    file.write_text("\n".join(rows) + "\n")
    data = DATASETS.create({"name": "csv", "path": str(file), "label_column": "target"}).load(
        seed=0
    )
    assert data.input_shape == (3,) and data.num_classes == 2
    assert len(data.y_train) + len(data.y_test) == 50
    with pytest.raises(DataError, match="label_column='label' is not a column"):
        DATASETS.create({"name": "csv", "path": str(file)}).load(seed=0)


def test_npz_dataset_with_and_without_a_test_split(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "xy.npz", x=rng.normal(size=(40, 4)), y=rng.integers(0, 2, 40))
    data = DATASETS.create({"name": "npz", "path": str(tmp_path / "xy.npz")}).load(seed=0)
    assert data.input_shape == (4,) and len(data.y_train) == 32
    np.savez(tmp_path / "split.npz", x_train=np.ones((6, 2)), y_train=[5, 7, 5, 7, 5, 7],
             x_test=np.zeros((2, 2)), y_test=[7, 5])  # fmt: skip
    split = DATASETS.create({"name": "npz", "path": str(tmp_path / "split.npz")}).load(seed=0)
    assert split.y_train.tolist() == [0, 1, 0, 1, 0, 1] and split.y_test.tolist() == [1, 0]
    np.savez(tmp_path / "bad.npz", features=np.ones(3))
    with pytest.raises(DataError, match="must hold arrays x and y"):
        DATASETS.create({"name": "npz", "path": str(tmp_path / "bad.npz")}).load(seed=0)


def test_federate_keeps_test_split_out_of_every_partition():
    cfg = load_config(overrides=["num_clients=7"])
    fed = cfg.federated_data()
    assert sum(len(p) for p in fed.parts) == len(fed.dataset.y_train)
    x0, _ = fed.client(0)
    assert len(x0) == len(fed.parts[0])
    with pytest.raises(ConfigError, match="partition-id=7 is outside"):
        fed.client(7)
