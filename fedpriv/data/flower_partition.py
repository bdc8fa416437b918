"""Flower's own partitioners (flwr-datasets) run over fedpriv's training labels.

So a fedpriv run can be partitioned exactly as a Flower baseline partitions: the same
``flwr_datasets.partitioner`` class, the same options and the same seed give the same
clients. fedpriv's own ``iid``/``dirichlet``/``shards`` follow the same papers but draw
their random numbers differently, so they are not index-identical to Flower's.

The labels become an in-memory Hugging Face ``datasets.Dataset`` (a ``label`` column
plus an ``index`` column that maps each partition back to rows of the training split);
nothing is downloaded. flwr-datasets is an optional extra, imported only when this
partition is chosen, so ``import fedpriv`` stays light.
"""

from __future__ import annotations

import dataclasses
import inspect
from types import ModuleType
from typing import Any

import numpy as np

from fedpriv.data.partition import PARTITIONS, PartitionSpec
from fedpriv.errors import ConfigError

#: The flwr-datasets partitioners offered: horizontal ones sized by ``num_partitions``
#: whose other arguments are plain values a YAML file can hold. (NaturalId, Size and
#: InnerDirichlet are sized otherwise; IdToSizeFnc takes a function; Distribution an
#: array; Continuous splits by a continuous property, not labels; Vertical* split columns.)
PARTITIONERS = (
    "DirichletPartitioner",
    "ExponentialPartitioner",
    "IidPartitioner",
    "LinearPartitioner",
    "PathologicalPartitioner",
    "ShardPartitioner",
    "SquarePartitioner",
)
#: Arguments fedpriv sets itself, and from what.
SET_BY_FEDPRIV = {"num_partitions": "num_clients", "seed": "the experiment's seed"}
#: The column of the in-memory Dataset that holds the labels (``partition_by``).
LABEL = "label"
EXTRA = "pip install 'fedpriv[flwr-datasets]'"


def flwr_partitioners() -> ModuleType:
    """``flwr_datasets.partitioner``, or a ConfigError naming the pip extra."""
    try:
        import flwr_datasets.partitioner as module
    except ImportError as error:
        raise ConfigError(
            f"partition=flwr needs the flwr-datasets package, which is not installed "
            f"({error}); install it with: {EXTRA}"
        ) from None
    return module


@PARTITIONS.register("flwr")
@dataclasses.dataclass(frozen=True)
class FlowerPartition(PartitionSpec):
    """A ``flwr_datasets.partitioner`` class run on the training labels.

    ``num_partitions`` is ``num_clients``; ``seed`` (where the class takes one) is the
    experiment's seed; ``partition_by`` is the label column. Like Flower's
    ``FederatedDataset`` (its default ``shuffle=True``), the training split is shuffled
    by the seed first: the seed-less partitioners (Iid, Linear, Square, Exponential)
    cut that order into contiguous blocks.
    """

    #: A class of ``flwr_datasets.partitioner``, e.g. ``DirichletPartitioner``.
    partitioner: str = "IidPartitioner"
    #: The class's other keyword arguments, e.g. ``{alpha: 0.5}``.
    options: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    #: Shuffle the training split by the seed before partitioning, as
    #: ``FederatedDataset(shuffle=True, seed=seed)`` does in Flower baselines.
    shuffle_dataset: bool = True

    def problems(self) -> list[tuple[str, str]]:
        if self.partitioner not in PARTITIONERS:
            return [("partitioner", f"is not offered; choose one of: {', '.join(PARTITIONERS)}")]
        try:
            module = flwr_partitioners()
        except ConfigError:
            return [("partitioner", f"needs the flwr-datasets package, not installed: {EXTRA}")]
        return self._option_problems(getattr(module, self.partitioner))

    def _option_problems(self, cls: type) -> list[tuple[str, str]]:
        """Each option checked against the class's signature, named by its key."""
        params = inspect.signature(cls).parameters
        given = set(self.options)
        takes = sorted(set(params) - set(SET_BY_FEDPRIV) - {"partition_by"})
        out = []
        for key in sorted(given & set(SET_BY_FEDPRIV)):
            out.append((f"options.{key}", f"is set by fedpriv from {SET_BY_FEDPRIV[key]}"))
        for key in sorted(given - set(params) - set(SET_BY_FEDPRIV)):
            rule = f"is not a parameter of {self.partitioner}; its parameters are: "
            out.append((f"options.{key}", rule + (", ".join(takes) or "(none)")))
        if "partition_by" in params and self.options.get("partition_by", LABEL) != LABEL:
            rule = f"is {self.options['partition_by']!r}; fedpriv partitions by {LABEL!r} only"
            out.append(("options.partition_by", rule))
        for key in takes:
            if params[key].default is inspect.Parameter.empty and key not in given:
                rule = f"is required by {self.partitioner}: add +partition.options.{key}=..."
                out.append((f"options.{key}", rule))
        return out

    def create(self, num_clients: int, seed: int) -> Any:
        """The flwr-datasets partitioner these options describe, for ``num_clients``."""
        cls = getattr(flwr_partitioners(), self.partitioner)
        params = inspect.signature(cls).parameters
        kwargs: dict[str, Any] = {"num_partitions": num_clients, **self.options}
        if "seed" in params:
            kwargs["seed"] = seed
        if "partition_by" in params:
            kwargs["partition_by"] = LABEL
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as error:
            raise ConfigError(self._refused(num_clients, error)) from None

    def split(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        from datasets import Dataset

        partitioner = self.create(num_clients, seed)
        data = Dataset.from_dict({LABEL: labels, "index": np.arange(len(labels))})
        if self.shuffle_dataset:
            data = data.shuffle(seed=seed)
        partitioner.dataset = data
        try:
            return [
                np.asarray(partitioner.load_partition(client)["index"], dtype=np.int64)
                for client in range(num_clients)
            ]
        except (ValueError, TypeError) as error:
            raise ConfigError(self._refused(num_clients, error)) from None

    def _refused(self, num_clients: int, error: Exception) -> str:
        return (
            f"partition.partitioner={self.partitioner!r} with partition.options="
            f"{self.options} and num_clients={num_clients} was refused by flwr-datasets: "
            f"{error}"
        )
