"""Element-wise model merging beside Flower's averaging strategies.

``max`` and ``absmax`` take, per parameter element, the largest value or the value of
largest magnitude over the clients' models: the Max / AbsMax rules for unifying models
trained apart (averaging is the third rule, FedAvg). The rules come from
:data:`fedpriv.merge.MERGE_RULES`; here they become Flower strategies (FedAvg with one
override), so sampling, reply checks and metric aggregation stay Flower's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


def inputs_side_by_side(
    merged: ArrayRecord, owned: Sequence[tuple[ArrayRecord, np.ndarray]]
) -> ArrayRecord:
    """``merged`` with its input layer placed side by side: for each ``(model, features)``
    pair, the first array's columns for ``features`` (a boolean mask over the flat input)
    come from that client's model, whatever the rule made of them.

    With ``partition=features`` every client trains only the input weights of its own
    features (the others see 0 and keep the global model's values), so a rule applied to
    those columns would mix trained weights with untouched ones; the later layers and the
    input layer's bias stay merged by the rule.
    """
    name = next(iter(merged))
    weight = merged[name].numpy().copy()
    for model, features in owned:
        columns = features.reshape(-1)
        weight[:, columns] = model[name].numpy()[:, columns]
    return ArrayRecord(
        {key: Array(weight) if key == name else array for key, array in merged.items()}
    )


def input_layer_problem(arrays: ArrayRecord, input_size: int) -> str | None:
    """Why ``arrays`` cannot have its input layer placed side by side: its first array
    must be a dense layer's weight over the ``input_size`` flat features (model=mlp,
    logreg); None when it is."""
    shape = tuple(next(iter(arrays.values())).shape) if len(arrays) else ()
    if len(shape) == 2 and shape[1] == input_size:
        return None
    return (
        f"partition=features merges the input layer column by column, so the model's first "
        f"layer must be dense over the {input_size} flat features; this model's first array "
        f"has shape {shape}: use model=mlp or model=logreg"
    )
