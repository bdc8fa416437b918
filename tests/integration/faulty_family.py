"""A horizontal family whose clients misbehave on purpose, one way per partition, for
rejection tests; partitions 7 and up train honestly.

0: NaN weights; 1: raises (Flower turns that into an error reply); 2: Inf weights;
3: a weight of the wrong shape; 4: the wrong dtype; 5: no metrics record;
6: a 2 MB junk array beside the model (oversized with engine.max_reply_mb=1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from fedpriv.strategies.base import Handler
from fedpriv.strategies.horizontal import Horizontal, HorizontalClient
from fedpriv.strategies.horizontal.async_family import AsyncHorizontal


def _each(arrays: ArrayRecord, change: Callable[[np.ndarray], np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(change(v.numpy())) for k, v in arrays.items()})


BAD: dict[int, Callable[[RecordDict], RecordDict]] = {
    0: lambda c: RecordDict({**c, "arrays": _each(c["arrays"], lambda v: np.full_like(v, np.nan))}),
    2: lambda c: RecordDict({**c, "arrays": _each(c["arrays"], lambda v: np.full_like(v, np.inf))}),
    3: lambda c: RecordDict({**c, "arrays": _each(c["arrays"], lambda v: v.reshape(-1)[:1])}),
    4: lambda c: RecordDict({**c, "arrays": _each(c["arrays"], lambda v: v.astype(np.float64))}),
    5: lambda c: RecordDict({"arrays": c["arrays"]}),
    6: lambda c: RecordDict(
        {**c, "junk": ArrayRecord({"junk": Array(np.zeros(500_000, np.float32))})}
    ),
}


class FaultyClient(HorizontalClient):
    def train(self, msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid == 1:
            raise RuntimeError("simulated crash on partition 1")
        reply = super().train(msg, context)
        if pid in BAD:
            return Message(content=BAD[pid](reply.content), reply_to=msg)
        return reply


class FaultyHorizontal(Horizontal):
    family = "faulty_horizontal"

    def client_handlers(self) -> Mapping[str, Handler]:
        return {"train": FaultyClient(self.config).train}


class FaultyAsyncHorizontal(AsyncHorizontal):
    """The same misbehaving clients under an asynchronous strategy."""

    family = "faulty_async"

    def client_handlers(self) -> Mapping[str, Handler]:
        return {**super().client_handlers(), "train": FaultyClient(self.config).train}
