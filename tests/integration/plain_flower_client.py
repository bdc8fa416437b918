"""A ClientApp written the way Flower's documentation writes one: it imports nothing from
fedpriv and applies no differential privacy. It nudges every array it receives and
replies ``arrays`` + ``metrics`` with ``num-examples``."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"]
    updated = ArrayRecord({key: Array(array.numpy() * 0.99) for key, array in arrays.items()})
    metrics = MetricRecord({"num-examples": 100, "train-loss": 0.5})
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)
