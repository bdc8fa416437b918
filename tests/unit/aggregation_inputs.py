"""Client models and train replies for the aggregation tests (test_aggregation.py,
test_crypto.py)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

RNG = np.random.default_rng(7)

SHAPES = {"w": (3, 4), "b": (4,)}


def reply(arrays: dict[str, np.ndarray], num_examples: int = 1, node: int = 1) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": num_examples, "train-loss": 1.0}),
        }
    )
    return Message(content, dst_node_id=node, message_type="train")


def client_models(n: int) -> list[dict[str, np.ndarray]]:
    return [{k: RNG.normal(size=s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(n)]
