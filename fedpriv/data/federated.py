"""The federated view of a dataset: the held-out test split plus one part per client.

Server and clients call :func:`federate` with the same specs and seed, so both sides
agree on every partition without shipping data. The result is memoized per process
(a pure function of immutable specs, not per-node state).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from fedpriv.data.datasets import Dataset, DatasetSpec
from fedpriv.data.partition import PartitionSpec, label_histograms
from fedpriv.errors import ConfigError


@dataclasses.dataclass(frozen=True, eq=False)
class FederatedData:
    dataset: Dataset
    parts: list[np.ndarray]
    #: Per client, the features it holds (``partition=features``); None: all of them.
    masks: list[np.ndarray] | None = None

    def client(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Training features and labels of one client (features it lacks read 0)."""
        if not 0 <= partition_id < len(self.parts):
            raise ConfigError(
                f"partition-id={partition_id} is outside [0, {len(self.parts)}): this node "
                "was started with a different num_clients than the experiment"
            )
        index = self.parts[partition_id]
        x = self.own_features(partition_id, self.dataset.x_train[index])
        return x, self.dataset.y_train[index]

    def own_features(self, partition_id: int, x: np.ndarray) -> np.ndarray:
        """``x`` as client ``partition_id`` sees it: the features it lacks set to 0."""
        if self.masks is None:
            return x
        return np.where(self.masks[partition_id], x, 0).astype(x.dtype, copy=False)

    def label_histograms(self) -> list[list[int]]:
        return label_histograms(self.dataset.y_train, self.parts, self.dataset.num_classes)


@functools.lru_cache(maxsize=4)
def federate(
    data: DatasetSpec, partition: PartitionSpec, num_clients: int, seed: int
) -> FederatedData:
    """Load ``data``, keep its test split aside and partition the training split."""
    dataset = data.load(seed)
    n = len(dataset.y_train)
    if num_clients > n and partition.disjoint:
        raise ConfigError(
            f"num_clients={num_clients} exceeds the {n} training samples of dataset "
            f"{data.name!r}; use at most {n} clients or partition=replicate"
        )
    parts = partition.split(dataset.y_train, num_clients, seed)
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ConfigError(
            f"partition {partition.name!r} left clients {empty[:5]} without samples; "
            "use fewer clients or another partitioner"
        )
    masks = partition.feature_masks(dataset.input_shape, num_clients, seed)
    return FederatedData(dataset=dataset, parts=parts, masks=masks)
