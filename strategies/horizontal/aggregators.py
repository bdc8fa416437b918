"""Element-wise model merging rules beside Flower's averaging ones.

``max`` and ``absmax`` take, per parameter element, the largest value or the value of
largest magnitude over the clients' models: the Max / AbsMax rules for unifying models
trained apart (averaging is the third rule, FedAvg). They are Flower strategies (FedAvg
with one override), so sampling, reply checks and metric aggregation stay Flower's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg


def elementwise_max(stacked: np.ndarray) -> np.ndarray:
    """Largest value over axis 0 (the clients)."""
    return stacked.max(axis=0)


def elementwise_absmax(stacked: np.ndarray) -> np.ndarray:
    """Value of largest magnitude over axis 0, sign kept; ties go to the first client."""
    pick = np.abs(stacked).argmax(axis=0)
    return np.take_along_axis(stacked, pick[None], axis=0)[0]


class ElementwiseMerge(FedAvg):
    """FedAvg whose array aggregate is an element-wise rule over the clients' arrays."""

    def __init__(self, merge: Callable[[np.ndarray], np.ndarray], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.merge = merge

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        records = [next(iter(c.array_records.values())) for c in contents]
        merged = ArrayRecord(
            {
                name: Array(self.merge(np.stack([r[name].numpy() for r in records])))
                for name in records[0]
            }
        )
        return merged, self.train_metrics_aggr_fn(contents, self.weighted_by_key)
