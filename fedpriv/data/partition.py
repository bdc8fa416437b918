"""Partitioners: how the training split is divided among clients.

Each is deterministic for a seed. All but ``replicate`` and ``features`` use every
training sample exactly once; ``replicate`` gives every client the whole set in its own
order (the "every edge device on the whole data with its own seed" setting);
``features`` gives every client every sample but only its own block of features (a
vertical split that the horizontal family can train and merge).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from fedpriv.data.vertical import feature_views
from fedpriv.errors import ConfigError
from fedpriv.registry import Registry, Spec


class PartitionSpec(Spec):
    """A partitioner; :meth:`split` returns one index array per client."""

    #: True when the parts are disjoint and cover every sample.
    disjoint: ClassVar[bool] = True
    #: True when clients hold different features (:meth:`feature_masks`), not all of them.
    splits_features: ClassVar[bool] = False

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        raise NotImplementedError

    def feature_masks(
        self, input_shape: tuple[int, ...], num_clients: int, seed: int
    ) -> list[np.ndarray] | None:
        """Per client, a boolean array of ``input_shape``: the features it holds (the
        others read 0). None: every client holds every feature."""
        return None


PARTITIONS: Registry[PartitionSpec] = Registry("partitioner")


@PARTITIONS.register("iid")
@dataclasses.dataclass(frozen=True)
class Iid(PartitionSpec):
    """Uniformly random, equal-sized parts (sizes differ by at most one)."""

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        order = np.random.default_rng(seed).permutation(len(labels))
        return [np.sort(part) for part in np.array_split(order, num_clients)]


@PARTITIONS.register("dirichlet")
@dataclasses.dataclass(frozen=True)
class Dirichlet(PartitionSpec):
    """Label skew: each class is spread over clients by proportions ~ Dir(alpha).

    Small ``alpha`` (0.1) gives each client few classes; large (100) approaches IID.
    Draws are repeated (up to ``max_draws``) until every client holds ``min_samples``.
    (Hsu et al. 2019, "Measuring the effects of non-identical data distribution".)
    """

    alpha: float = 0.5
    min_samples: int = 2
    max_draws: int = 100

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not self.alpha > 0:
            out.append(("alpha", "must be > 0 (e.g. 0.1 skewed, 0.5, 100 near IID)"))
        if self.min_samples < 1:
            out.append(("min_samples", "must be >= 1"))
        if self.max_draws < 1:
            out.append(("max_draws", "must be >= 1"))
        return out

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        if self.min_samples * num_clients > len(labels):
            raise ConfigError(
                f"partition.min_samples={self.min_samples} × num_clients={num_clients} "
                f"exceeds the {len(labels)} training samples; lower one of them"
            )
        rng = np.random.default_rng(seed)
        by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
        for _ in range(self.max_draws):
            parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for members in by_class:
                shares = rng.dirichlet(np.full(num_clients, self.alpha))
                cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
                for client, chunk in enumerate(np.split(members, cuts)):
                    parts[client].append(chunk)
            merged = [np.sort(np.concatenate(p)) for p in parts]
            if min(len(p) for p in merged) >= self.min_samples:
                return merged
        raise ConfigError(
            f"partition.alpha={self.alpha} left some client with fewer than "
            f"partition.min_samples={self.min_samples} samples in {self.max_draws} draws; "
            "raise alpha, lower min_samples or use fewer clients"
        )


@PARTITIONS.register("shards")
@dataclasses.dataclass(frozen=True)
class Shards(PartitionSpec):
    """Pathological non-IID: sort by label, cut into ``num_clients × classes_per_client``
    shards, deal ``classes_per_client`` shards to each client (McMahan et al. 2017)."""

    classes_per_client: int = 2

    def problems(self) -> list[tuple[str, str]]:
        if self.classes_per_client < 1:
            return [("classes_per_client", "must be >= 1")]
        return []

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        num_shards = num_clients * self.classes_per_client
        if num_shards > len(labels):
            raise ConfigError(
                f"partition.classes_per_client={self.classes_per_client} × "
                f"num_clients={num_clients} shards exceed the {len(labels)} training samples"
            )
        rng = np.random.default_rng(seed)
        shuffled = rng.permutation(len(labels))
        by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
        shards = np.array_split(by_label, num_shards)
        deal = rng.permutation(num_shards).reshape(num_clients, self.classes_per_client)
        return [np.sort(np.concatenate([shards[s] for s in row])) for row in deal]


@PARTITIONS.register("quantity_skew")
@dataclasses.dataclass(frozen=True)
class QuantitySkew(PartitionSpec):
    """Sizes follow a power law: the k-th largest client holds ∝ k^(-exponent) samples
    (at least ``min_samples``); labels stay IID. Client ranks are shuffled by seed."""

    exponent: float = 1.0
    min_samples: int = 2

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.exponent < 0:
            out.append(("exponent", "must be >= 0 (0 gives equal sizes)"))
        if self.min_samples < 1:
            out.append(("min_samples", "must be >= 1"))
        return out

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        n = len(labels)
        if self.min_samples * num_clients > n:
            raise ConfigError(
                f"partition.min_samples={self.min_samples} × num_clients={num_clients} "
                f"exceeds the {n} training samples; lower one of them"
            )
        rng = np.random.default_rng(seed)
        weights = np.arange(1, num_clients + 1, dtype=float) ** -self.exponent
        weights = rng.permutation(weights) / weights.sum()
        spare = n - self.min_samples * num_clients
        sizes = self.min_samples + np.floor(weights * spare).astype(int)
        # Hand the rounding remainder to the largest fractional parts.
        remainder = n - sizes.sum()
        sizes[np.argsort(-(weights * spare % 1), kind="stable")[:remainder]] += 1
        order = rng.permutation(n)
        return [np.sort(p) for p in np.split(order, np.cumsum(sizes)[:-1])]


@PARTITIONS.register("replicate")
@dataclasses.dataclass(frozen=True)
class Replicate(PartitionSpec):
    """Every client gets the whole training set, shuffled under its own seed."""

    disjoint: ClassVar[bool] = False

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        return [
            np.random.default_rng([seed, client]).permutation(len(labels))
            for client in range(num_clients)
        ]


@PARTITIONS.register("features")
@dataclasses.dataclass(frozen=True)
class Features(PartitionSpec):
    """Every client holds every training sample, but only its own block of features: the
    others read 0 in its data, so a model over the whole input trains only its own
    block's input weights. ``blocks``: ``halves`` (left/right of a C×H×W image, 2
    clients), ``quadrants`` (4 clients) or ``columns`` (contiguous runs of the flat
    features, any count), as ``vertical.split`` cuts them. The labels are every client's:
    the setting of unifying models trained apart on feature halves, where each holder
    can train alone (unlike split learning, where one party owns the labels)."""

    disjoint: ClassVar[bool] = False
    splits_features: ClassVar[bool] = True
    blocks: str = "halves"

    BLOCKS: ClassVar[dict[str, int | None]] = {"halves": 2, "quadrants": 4, "columns": None}

    def problems(self) -> list[tuple[str, str]]:
        if self.blocks not in self.BLOCKS:
            return [("blocks", f"must be one of: {', '.join(self.BLOCKS)}")]
        return []

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        return [np.arange(len(labels)) for _ in range(num_clients)]

    def feature_masks(
        self, input_shape: tuple[int, ...], num_clients: int, seed: int
    ) -> list[np.ndarray]:
        needed = self.BLOCKS[self.blocks]
        if needed is not None and num_clients != needed:
            raise ConfigError(
                f"partition.blocks={self.blocks!r} needs num_clients={needed}, got "
                f"{num_clients}; use partition.blocks=columns for other counts"
            )
        if self.blocks != "columns" and len(input_shape) != 3:
            raise ConfigError(
                f"partition.blocks={self.blocks!r} cuts C×H×W images; this dataset's inputs "
                f"have shape {input_shape}: use partition.blocks=columns"
            )
        size = int(np.prod(input_shape))
        if num_clients > size:
            raise ConfigError(
                f"num_clients={num_clients} exceeds the {size} features to share out; "
                "use fewer clients"
            )
        masks = []
        for view in feature_views(input_shape, num_clients, self.blocks, seed=seed):
            mask = np.zeros(input_shape, dtype=bool)
            if view and isinstance(view[0], slice):
                mask[(slice(None), *view)] = True
            else:
                mask.reshape(-1)[np.asarray(view, dtype=np.int64)] = True
            masks.append(mask)
        return masks


def label_histograms(
    labels: np.ndarray, parts: list[np.ndarray], num_classes: int
) -> list[list[int]]:
    """Per-client count of each class, stored with the results."""
    return [np.bincount(labels[p], minlength=num_classes).tolist() for p in parts]
