"""Datasets by name: sklearn's bundled sets, MNIST-family IDX files, synthetic, CSV, NPZ.

Every loader returns a :class:`Dataset` whose test split is held out *before* any
partitioning, so evaluation never sees a client's training samples.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn import datasets as skdatasets
from sklearn.model_selection import train_test_split

from fedpriv.data.finite import refuse_non_finite_cells, refuse_non_finite_values
from fedpriv.data.idx import read_idx
from fedpriv.errors import DataError
from fedpriv.registry import Registry, Spec

#: Where Debian's ``dataset-fashion-mnist`` package puts its files.
DEBIAN_DATASETS = Path("/usr/share/datasets")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train/test arrays plus what a model needs to know about them.

    ``x`` arrays are float32 with per-sample shape ``input_shape``; ``y`` are int64
    class indices in ``[0, num_classes)``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]


class DatasetSpec(Spec):
    """A dataset choice; :meth:`load` reads it and splits off the test set."""

    def load(self, seed: int) -> Dataset:
        raise NotImplementedError

    def source_files(self) -> list[Path]:
        """The files :meth:`load` reads, for ``provenance.json`` (path and SHA-256);
        none for data made in memory."""
        return []


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _fraction_problems(test_fraction: float) -> list[tuple[str, str]]:
    if not 0.0 < test_fraction < 1.0:
        return [("test_fraction", "must be in (0, 1), e.g. 0.2")]
    return []


def _limit_problems(limit: int | None) -> list[tuple[str, str]]:
    if limit is not None and limit < 1:
        return [("limit", "must be >= 1 or null (all)")]
    return []


def _split(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    test_fraction: float,
    seed: int,
    input_shape: tuple[int, ...],
    standardize: bool = False,
    limit: int | None = None,
) -> Dataset:
    """Stratified train/test split; optional standardization fitted on train only;
    ``limit`` keeps the first that many training samples (the split is shuffled by the
    seed, so a random subset) and the whole test split."""
    y = np.asarray(y)
    classes, y = np.unique(y, return_inverse=True)
    x_train, x_test, y_train, y_test = train_test_split(
        np.asarray(x, dtype=np.float32),
        y.astype(np.int64),
        test_size=test_fraction,
        random_state=seed,
        stratify=y if np.bincount(y).min() >= 2 else None,
    )
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    if standardize:
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        std[std == 0] = 1.0
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return Dataset(
        name=name,
        x_train=x_train.reshape(-1, *input_shape).astype(np.float32),
        y_train=y_train,
        x_test=x_test.reshape(-1, *input_shape).astype(np.float32),
        y_test=y_test,
        num_classes=len(classes),
        input_shape=input_shape,
    )


@dataclasses.dataclass(frozen=True)
class _Bundled(DatasetSpec):
    """A dataset shipped with scikit-learn, split by ``test_fraction``."""

    loader: ClassVar[Callable[[], Any]]
    #: The file in ``sklearn/datasets/data/`` the loader reads.
    file: ClassVar[str]
    #: Divide raw features by this (digits' pixels are 0..16).
    scale: ClassVar[float] = 1.0
    standardize: ClassVar[bool] = True
    input_shape: ClassVar[tuple[int, ...]]

    test_fraction: float = 0.2
    #: Train on only this many of the training samples (None: all), e.g. one device's
    #: share trained alone as a study's baseline; the test split stays whole.
    limit: int | None = None

    def problems(self) -> list[tuple[str, str]]:
        return _fraction_problems(self.test_fraction) + _limit_problems(self.limit)

    def load(self, seed: int) -> Dataset:
        bunch = type(self).loader()
        return _split(
            self.name,
            bunch.data / self.scale,
            bunch.target,
            test_fraction=self.test_fraction,
            seed=seed,
            input_shape=self.input_shape,
            standardize=self.standardize,
            limit=self.limit,
        )

    def source_files(self) -> list[Path]:
        return [Path(skdatasets.__file__).parent / "data" / self.file]


@DATASETS.register("digits")
@dataclasses.dataclass(frozen=True)
class Digits(_Bundled):
    """sklearn's 8×8 handwritten digits (1,797 images, 10 classes), scaled to [0, 1]."""

    loader = staticmethod(skdatasets.load_digits)
    file = "digits.csv.gz"
    scale = 16.0
    standardize = False
    input_shape = (1, 8, 8)


@DATASETS.register("breast_cancer")
@dataclasses.dataclass(frozen=True)
class BreastCancer(_Bundled):
    """sklearn's Wisconsin breast cancer set (569 × 30 features, 2 classes), standardized."""

    loader = staticmethod(skdatasets.load_breast_cancer)
    file = "breast_cancer.csv"
    input_shape = (30,)


@DATASETS.register("wine")
@dataclasses.dataclass(frozen=True)
class Wine(_Bundled):
    """sklearn's wine recognition set (178 × 13 features, 3 classes), standardized."""

    loader = staticmethod(skdatasets.load_wine)
    file = "wine_data.csv"
    input_shape = (13,)


@DATASETS.register("synthetic")
@dataclasses.dataclass(frozen=True)
class Synthetic(DatasetSpec):
    """sklearn ``make_classification``: any size, for scale tests."""

    num_samples: int = 2000
    num_features: int = 20
    num_informative: int = 10
    num_classes: int = 2
    test_fraction: float = 0.2

    def problems(self) -> list[tuple[str, str]]:
        out = _fraction_problems(self.test_fraction)
        if self.num_samples < 4:
            out.append(("num_samples", "must be >= 4"))
        if self.num_features < 1:
            out.append(("num_features", "must be >= 1"))
        if not 1 <= self.num_informative <= self.num_features:
            out.append(("num_informative", f"must be in [1, num_features={self.num_features}]"))
        if self.num_classes < 2:
            out.append(("num_classes", "must be >= 2"))
        elif self.num_classes > 2**self.num_informative:
            out.append(("num_classes", "must be <= 2**num_informative (sklearn's rule)"))
        return out

    def load(self, seed: int) -> Dataset:
        x, y = skdatasets.make_classification(
            n_samples=self.num_samples,
            n_features=self.num_features,
            n_informative=self.num_informative,
            n_redundant=0,
            n_classes=self.num_classes,
            random_state=seed,
        )
        return _split(
            "synthetic",
            x,
            y,
            test_fraction=self.test_fraction,
            seed=seed,
            input_shape=(self.num_features,),
            standardize=True,
        )


def idx_search_dirs(name: str, path: str | None) -> list[Path]:
    """Where an MNIST-family dataset is looked for, in order: only ``data.path`` when it
    is set (an explicit path never falls back to another copy)."""
    if path:
        return [Path(path).expanduser()]
    dirs = []
    if env := os.environ.get("FEDPRIV_DATA_DIR"):
        dirs += [Path(env) / name, Path(env) / name.replace("_", "-"), Path(env)]
    dirs.append(DEBIAN_DATASETS / name.replace("_", "-"))
    return dirs


def _find_idx(directory: Path, stem: str) -> Path | None:
    for suffix in ("", ".gz"):
        for candidate in (
            directory / f"{stem}{suffix}",
            directory / f"{stem.replace('-idx', '.idx')}{suffix}",
        ):
            if candidate.is_file():
                return candidate
    return None


_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclasses.dataclass(frozen=True)
class _IdxDataset(DatasetSpec):
    """MNIST-family images (1×28×28, 10 classes) from IDX files; the files' own test set."""

    path: str | None = None
    #: Use only the first ``limit`` training images (None: all 60,000).
    limit: int | None = None

    hint: ClassVar[str] = ""

    def problems(self) -> list[tuple[str, str]]:
        return _limit_problems(self.limit)

    def source_files(self) -> list[Path]:
        """The four IDX files, from the first directory that holds them all."""
        searched = idx_search_dirs(self.name, self.path)
        for directory in searched:
            files = [_find_idx(directory, stem) for stem in _IDX_STEMS]
            if all(files):
                return [file for file in files if file is not None]
        where = "\n  ".join(str(d) for d in searched)
        raise DataError(
            f"dataset {self.name!r} not found. Looked for {', '.join(_IDX_STEMS)} "
            f"(optionally .gz) in:\n  {where}\n{self.hint}"
        )

    def load(self, seed: int) -> Dataset:
        x_train, y_train, x_test, y_test = (read_idx(f) for f in self.source_files())
        if self.limit is not None:
            x_train, y_train = x_train[: self.limit], y_train[: self.limit]
        scale = np.float32(1 / 255)
        return Dataset(
            name=self.name,
            x_train=(x_train.astype(np.float32) * scale).reshape(-1, 1, 28, 28),
            y_train=y_train.astype(np.int64),
            x_test=(x_test.astype(np.float32) * scale).reshape(-1, 1, 28, 28),
            y_test=y_test.astype(np.int64),
            num_classes=10,
            input_shape=(1, 28, 28),
        )


@DATASETS.register("fashion_mnist")
@dataclasses.dataclass(frozen=True)
class FashionMnist(_IdxDataset):
    hint: ClassVar[str] = (
        "Get it with `apt-get install dataset-fashion-mnist` (Debian), or put the four IDX "
        "files in a directory and set data.path or FEDPRIV_DATA_DIR."
    )


@DATASETS.register("mnist")
@dataclasses.dataclass(frozen=True)
class Mnist(_IdxDataset):
    hint: ClassVar[str] = (
        "Put the four MNIST IDX files in a directory and set data.path or FEDPRIV_DATA_DIR."
    )


def _read_file(path: str | None, kind: str) -> Path:
    if not path:
        raise DataError(f"dataset {kind!r} needs data.path=<file>")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"dataset {kind!r}: no file at data.path={path!r} ({file.resolve()})")
    return file


@DATASETS.register("csv")
@dataclasses.dataclass(frozen=True)
class Csv(DatasetSpec):
    """A CSV file with a header row: numeric feature columns and one label column."""

    path: str | None = None
    label_column: str = "label"
    test_fraction: float = 0.2
    standardize: bool = True

    def problems(self) -> list[tuple[str, str]]:
        out = _fraction_problems(self.test_fraction)
        if not self.path:
            out.append(("path", "must name a CSV file"))
        return out

    def source_files(self) -> list[Path]:
        return [_read_file(self.path, "csv")]

    def load(self, seed: int) -> Dataset:
        file = _read_file(self.path, "csv")
        with file.open() as handle:
            header = handle.readline().strip().split(",")
        if self.label_column not in header:
            raise DataError(
                f"data.label_column={self.label_column!r} is not a column of {file}; "
                f"columns are: {', '.join(header)}"
            )
        try:
            table = np.loadtxt(file, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
        except ValueError as error:
            raise DataError(f"{file}: {error}") from error
        refuse_non_finite_cells(file, table, header)
        label = header.index(self.label_column)
        x = np.delete(table, label, axis=1)
        return _split(
            file.stem,
            x,
            table[:, label],
            test_fraction=self.test_fraction,
            seed=seed,
            input_shape=(x.shape[1],),
            standardize=self.standardize,
        )


@DATASETS.register("npz")
@dataclasses.dataclass(frozen=True)
class Npz(DatasetSpec):
    """An ``.npz`` with arrays ``x`` and ``y`` (split here), or with
    ``x_train``, ``y_train``, ``x_test`` and ``y_test``."""

    path: str | None = None
    test_fraction: float = 0.2

    def problems(self) -> list[tuple[str, str]]:
        out = _fraction_problems(self.test_fraction)
        if not self.path:
            out.append(("path", "must name an .npz file"))
        return out

    def source_files(self) -> list[Path]:
        return [_read_file(self.path, "npz")]

    def load(self, seed: int) -> Dataset:
        file = _read_file(self.path, "npz")
        with np.load(file) as arrays:
            keys = set(arrays.files)
            for name in sorted(keys & {"x", "y", "x_train", "y_train", "x_test", "y_test"}):
                refuse_non_finite_values(file, name, arrays[name])
            if {"x_train", "y_train", "x_test", "y_test"} <= keys:
                x_train, x_test = arrays["x_train"], arrays["x_test"]
                classes, y_all = np.unique(
                    np.concatenate([arrays["y_train"], arrays["y_test"]]), return_inverse=True
                )
                n = len(x_train)
                return Dataset(
                    name=file.stem,
                    x_train=x_train.astype(np.float32),
                    y_train=y_all[:n].astype(np.int64),
                    x_test=x_test.astype(np.float32),
                    y_test=y_all[n:].astype(np.int64),
                    num_classes=len(classes),
                    input_shape=tuple(x_train.shape[1:]),
                )
            if {"x", "y"} <= keys:
                x = arrays["x"]
                return _split(
                    file.stem,
                    x,
                    arrays["y"],
                    test_fraction=self.test_fraction,
                    seed=seed,
                    input_shape=tuple(x.shape[1:]),
                )
        raise DataError(
            f"{file} must hold arrays x and y, or x_train, y_train, x_test and y_test; "
            f"it holds: {', '.join(sorted(keys))}"
        )


def available(name: str) -> bool:
    """Whether dataset ``name`` loads on this machine: an optional one (Fashion-MNIST from
    Debian) may be absent, and benchmarks fall back to a bundled set."""
    try:
        DATASETS.create({"name": name, "limit": 10}, "data").load(0)
    except DataError:
        return False
    return True
