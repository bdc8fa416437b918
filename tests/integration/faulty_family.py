"""A horizontal family whose clients misbehave on purpose, for rejection tests.

Partition 0 replies with NaN weights, partition 1 raises (Flower turns that into an
error reply); the others train normally.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from strategies.base import Handler
from strategies.horizontal import Horizontal, HorizontalClient


class FaultyClient(HorizontalClient):
    def train(self, msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid == 1:
            raise RuntimeError("simulated crash on partition 1")
        reply = super().train(msg, context)
        if pid == 0:
            arrays = reply.content["arrays"]
            reply.content["arrays"] = ArrayRecord(
                {k: Array(np.full(v.shape, np.nan, np.float32)) for k, v in arrays.items()}
            )
        return reply


class FaultyHorizontal(Horizontal):
    family = "faulty_horizontal"

    def client_handlers(self) -> Mapping[str, Handler]:
        return {"train": FaultyClient(self.config).train}
