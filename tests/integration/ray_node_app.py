"""The plain Flower ClientApp of :mod:`flower_style_app`, whose train replies also say
which Ray node ran them (``ray-node``: the first 48 bits of Ray's node ID), for
tests/integration/test_ray_cluster.py."""

from __future__ import annotations

import flower_style_app
import ray
from flwr.app import Context, Message
from flwr.clientapp import ClientApp


def ray_node_number(node_id: str) -> int:
    """A Ray node ID (hex) as a number a metric record can hold."""
    return int(node_id[:12], 16)


def train(msg: Message, context: Context) -> Message:
    reply = flower_style_app.train(msg, context)
    node = ray.get_runtime_context().get_node_id()
    reply.content["metrics"]["ray-node"] = ray_node_number(node)
    return reply


app = ClientApp()
app.train()(train)
app.evaluate()(flower_style_app.evaluate)
