"""A ClientApp written the way Flower's documentation writes one (the Message API
quickstart), with no fedpriv import: its own model class and names, its own data
loading, the learning rate and epochs from the train message's config, and a reply of
``arrays`` plus ``metrics`` with ``num-examples``. tests/integration/test_interop.py
runs it against fedpriv's ServerApp."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from sklearn.datasets import load_digits
from torch import nn


class Net(nn.Module):
    """Multinomial logistic regression on 8×8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def load_data(partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)[partition_id::num_partitions]
    y = torch.tensor(digits.target)[partition_id::num_partitions]
    return x, y


def set_weights(net: Net, arrays: ArrayRecord) -> None:
    """Flower's classic way: the arrays in the model's order, under the model's own names."""
    state = arrays.to_torch_state_dict()
    net.load_state_dict(dict(zip(net.state_dict(), state.values(), strict=True)))


def train_net(net: Net, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch: int):
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        for start in range(0, len(y), batch):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(
                net(x[start : start + batch]), y[start : start + batch]
            )
            loss.backward()
            optimizer.step()
    return float(loss)


def train(msg: Message, context: Context) -> Message:
    net = Net()
    set_weights(net, msg.content["arrays"])
    x, y = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
    config = msg.content["config"]
    train_loss = train_net(
        net, x, y, int(config["local-epochs"]), float(config["lr"]), int(config["batch-size"])
    )
    metrics = MetricRecord({"train_loss": train_loss, "num-examples": len(y)})
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def train_under_received_names(msg: Message, context: Context) -> Message:
    """The same training, replying under the names the arrays arrived with: Flower's
    client-side DP mods compare the reply's names with the message's."""
    reply = train(msg, context)
    names = list(msg.content["arrays"])
    trained = reply.content["arrays"]
    reply.content["arrays"] = ArrayRecord(dict(zip(names, trained.values(), strict=True)))
    return reply


def evaluate(msg: Message, context: Context) -> Message:
    net = Net()
    set_weights(net, msg.content["arrays"])
    x, y = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
    with torch.no_grad():
        accuracy = float(np.mean((net(x).argmax(1) == y).numpy()))
    metrics = MetricRecord({"eval_acc": accuracy, "num-examples": len(y)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


app = ClientApp()
app.train()(train)
app.evaluate()(evaluate)

#: The same client with Flower's own client-side clipping mod (central DP, side=client).
clipped_app = ClientApp(mods=[fixedclipping_mod])
clipped_app.train()(train_under_received_names)
