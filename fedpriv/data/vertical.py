"""Vertical partitioning: each party holds some features of some of the same entities.

Every entity (a row of the dataset, train or test) gets an opaque ID. Party ``p`` sees
its own slice of the features (``columns``, ``random``, ``halves`` or ``quadrants`` of
an image), of its own subset of the training entities (``overlap``: the fraction every
party holds; each other entity is missing from at least one party) plus all test
entities, in its own row order. Party 0 also holds the labels. Nothing here aligns the
parties: that is the private set intersection's job (:mod:`fedpriv.crypto.psi`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Sequence

import numpy as np

from fedpriv.data.datasets import Dataset, DatasetSpec
from fedpriv.errors import ConfigError

#: Ways of splitting features, with the number of parties each allows (None: any).
SPLITS: dict[str, int | None] = {"columns": None, "random": None, "halves": 2, "quadrants": 4}
LABEL_OWNER = 0


@dataclasses.dataclass(frozen=True, eq=False)
class PartyTable:
    """What one party holds: its entity IDs and their features (and labels for party 0)."""

    party: int
    ids: list[str]
    x: np.ndarray
    #: True for the rows of test entities (the agreed evaluation cohort).
    is_test: np.ndarray
    #: Labels of every row; only the label owner has them.
    y: np.ndarray | None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def feature_views(
    input_shape: tuple[int, ...],
    parties: int,
    split: str,
    columns: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
) -> list[tuple[int, ...] | tuple[slice, ...]]:
    """Per party, the features it sees: flat feature indices (``columns``, ``random``)
    or a (height, width) window of a C×H×W image (``halves``, ``quadrants``)."""
    if split not in SPLITS:
        raise ConfigError(
            f"vertical.split={split!r} is unknown; choose one of: {', '.join(SPLITS)}"
        )
    needed = SPLITS[split]
    if needed is not None and parties != needed:
        raise ConfigError(
            f"vertical.split={split!r} needs vertical.parties={needed}, got {parties}; "
            "use split=columns or random for other counts"
        )
    features = math.prod(input_shape)
    if split in ("halves", "quadrants"):
        if len(input_shape) != 3:
            raise ConfigError(
                f"vertical.split={split!r} splits C×H×W images; this dataset's inputs have "
                f"shape {input_shape}: use split=columns or random"
            )
        _, height, width = input_shape
        if split == "halves":
            return [(slice(None), slice(0, width // 2)), (slice(None), slice(width // 2, None))]
        rows = (slice(0, height // 2), slice(height // 2, None))
        cols = (slice(0, width // 2), slice(width // 2, None))
        return [(r, c) for r in rows for c in cols]
    if parties > features:
        raise ConfigError(
            f"vertical.parties={parties} exceeds the {features} features of this dataset"
        )
    if split == "random":
        order = np.random.default_rng(seed).permutation(features)
        return [tuple(sorted(int(i) for i in g)) for g in np.array_split(order, parties)]
    if columns is None:
        return [tuple(int(i) for i in g) for g in np.array_split(np.arange(features), parties)]
    if len(columns) != parties:
        raise ConfigError(
            f"vertical.columns lists {len(columns)} groups; it needs one per party "
            f"(vertical.parties={parties})"
        )
    flat = [int(i) for group in columns for i in group]
    bad = [i for i in flat if not 0 <= i < features]
    if bad or any(len(group) == 0 for group in columns):
        raise ConfigError(
            f"vertical.columns must give each party a non-empty list of feature indices in "
            f"[0, {features}); got out-of-range {bad[:5]}"
            if bad
            else "vertical.columns must give each party at least one feature index"
        )
    return [tuple(int(i) for i in group) for group in columns]


def take(x: np.ndarray, view: tuple[int, ...] | tuple[slice, ...]) -> np.ndarray:
    """One party's features of the rows in ``x`` (N × input shape)."""
    if view and isinstance(view[0], slice):
        rows, cols = view
        return np.ascontiguousarray(x[:, :, rows, cols])
    columns = np.asarray(view, dtype=np.int64)
    return np.ascontiguousarray(x.reshape(len(x), -1)[:, columns])


def entity_ids(count: int, seed: int) -> list[str]:
    """Opaque, stable IDs (as a hospital's patient numbers would be, not row numbers)."""
    return [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:16] for i in range(count)]


def holders(train: int, parties: int, overlap: float, seed: int) -> np.ndarray:
    """``(parties, train)`` booleans: who holds each training entity. A fraction
    ``overlap`` is held by all; each other entity misses one random party at least."""
    rng = np.random.default_rng([seed, 7])
    held = np.ones((parties, train), bool)
    partial = rng.permutation(train)[: train - round(overlap * train)]
    for entity in partial:
        held[:, entity] = rng.random(parties) < 0.5
        held[rng.integers(parties), entity] = False
    return held


@functools.lru_cache(maxsize=4)
def vertical_tables(
    data: DatasetSpec,
    parties: int,
    split: str,
    columns: tuple[tuple[int, ...], ...] | None,
    overlap: float,
    seed: int,
) -> tuple[Dataset, list[PartyTable]]:
    """The dataset and every party's table (each party calls this and keeps its own)."""
    dataset = data.load(seed)
    views = feature_views(dataset.input_shape, parties, split, columns, seed)
    n_train, n_test = len(dataset.y_train), len(dataset.y_test)
    ids = entity_ids(n_train + n_test, seed)
    x_all = np.concatenate([dataset.x_train, dataset.x_test])
    y_all = np.concatenate([dataset.y_train, dataset.y_test])
    held = holders(n_train, parties, overlap, seed)
    tables = []
    for party, view in enumerate(views):
        rows = np.concatenate([np.flatnonzero(held[party]), np.arange(n_train, n_train + n_test)])
        rows = np.random.default_rng([seed, 11, party]).permutation(rows)
        tables.append(
            PartyTable(
                party=party,
                ids=[ids[r] for r in rows],
                x=take(x_all[rows], view),
                is_test=rows >= n_train,
                y=y_all[rows] if party == LABEL_OWNER else None,
            )
        )
    return dataset, tables


@dataclasses.dataclass(frozen=True, eq=False)
class Joined:
    """The parties' features of the entities they all hold, joined in the agreed order
    (by ID): what a trusted third party would see, for centralized baselines and tests."""

    ids_train: list[str]
    ids_test: list[str]
    train: list[np.ndarray]
    test: list[np.ndarray]
    y_train: np.ndarray
    y_test: np.ndarray


def join(tables: Sequence[PartyTable]) -> Joined:
    """Join the tables on their common IDs (plaintext: the ground truth PSI must match)."""
    common = set.intersection(*(set(t.ids) for t in tables))
    owner = tables[LABEL_OWNER]
    assert owner.y is not None
    split = {i: bool(test) for i, test in zip(owner.ids, owner.is_test, strict=True)}
    ids = {
        False: sorted(i for i in common if not split[i]),
        True: sorted(i for i in common if split[i]),
    }
    rows = [{i: r for r, i in enumerate(t.ids)} for t in tables]
    parts = {
        test: [t.x[[where[i] for i in ids[test]]] for t, where in zip(tables, rows, strict=True)]
        for test in (False, True)
    }
    labels = {test: owner.y[[rows[LABEL_OWNER][i] for i in ids[test]]] for test in (False, True)}
    return Joined(ids[False], ids[True], parts[False], parts[True], labels[False], labels[True])
