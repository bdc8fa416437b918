"""Element-wise model merging beside Flower's averaging strategies.

``max`` and ``absmax`` take, per parameter element, the largest value or the value of
largest magnitude over the clients' models: the Max / AbsMax rules for unifying models
trained apart (averaging is the third rule, FedAvg). The rules come from
:data:`fedpriv.merge.MERGE_RULES`; here they become Flower strategies (FedAvg with one
override), so sampling, reply checks and metric aggregation stay Flower's.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fedpriv.merge import MergeRule


class ElementwiseMerge(FedAvg):
    """FedAvg whose array aggregate is a merge rule over the clients' arrays."""

    def __init__(self, merge: MergeRule, **kwargs: object) -> None:
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
                name: Array(self.merge.numpy(np.stack([r[name].numpy() for r in records])))
                for name in records[0]
            }
        )
        return merged, self.train_metrics_aggr_fn(contents, self.weighted_by_key)
