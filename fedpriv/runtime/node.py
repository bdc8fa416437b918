"""Node-side helpers: which partition a node holds, and its state in ``context.state``.

A simulated node's handlers run in actors shared by many nodes, and a deployed node
may start a fresh process per message, so node state lives only in Flower's
``context.state``, never in module globals.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context

from fedpriv.errors import ConfigError

STATE_KEY = "fedpriv"


def partition_id(context: Context) -> int:
    """The node's partition, from its ``partition-id`` node config (set by the engine)."""
    value = context.node_config.get("partition-id")
    if value is None:
        raise ConfigError(
            "this node has no 'partition-id' in its node config; start it with "
            "--node-config 'partition-id=<k> num-partitions=<n>'"
        )
    return int(value)


def node_counter(context: Context, name: str) -> int:
    """Increment and return a per-node counter kept in ``context.state``."""
    record = context.state.config_records.get(STATE_KEY)
    if record is None:
        record = ConfigRecord()
        context.state[STATE_KEY] = record
    value = int(record.get(name, 0)) + 1  # type: ignore[arg-type]
    record[name] = value
    return value
