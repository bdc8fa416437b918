"""Node-side helpers: which partition a node holds, and its state in ``context.state``.

A simulated node's handlers run in actors shared by many nodes, and a deployed node
may start a fresh process per message, so node state lives only in Flower's
``context.state``, never in module globals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ConfigRecord, Context

from fedpriv.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fedpriv.data.federated import FederatedData

STATE_KEY = "fedpriv"
#: Run-config keys ``fedpriv run`` submits to a fleet: the validated config (JSON), the
#: results directory on the server's host, and whether the run resumes its checkpoint.
CONFIG_KEY, OUTPUT_KEY, RESUME_KEY = "fedpriv-config", "output-dir", "resume"


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


def node_data(context: Context, data: FederatedData) -> tuple[np.ndarray, np.ndarray]:
    """The node's training data: its own file (``data-path`` in the node config, an
    ``.npz`` with ``x`` and ``y`` preprocessed as ``fedpriv partition`` writes them), or
    its ``partition-id`` of the experiment's dataset."""
    path = context.node_config.get("data-path")
    if path is None:
        expected = context.node_config.get("num-partitions")
        parts = len(data.parts)
        if expected is not None and int(expected) != parts:
            raise ConfigError(
                f"this node was started with num-partitions={expected}, but the experiment "
                f"has num_clients={parts}; start the SuperNodes with --num-partitions {parts}"
            )
        return data.client(partition_id(context))
    return load_node_file(str(path), data.dataset.input_shape, data.dataset.num_classes)


def load_node_file(
    path: str, input_shape: tuple[int, ...], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a device's ``.npz`` (arrays ``x``: float32 samples of
    ``input_shape``, ``y``: int labels in ``[0, num_classes)``)."""
    try:
        with np.load(path) as arrays:
            x, y = arrays["x"], arrays["y"]
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"data-path={path!r}: cannot read arrays x and y ({error})") from error
    if x.shape[1:] != tuple(input_shape) or len(x) != len(y) or len(y) == 0:
        raise DataError(
            f"data-path={path!r}: x has shape {x.shape} and y {y.shape}; expected "
            f"(n, {', '.join(map(str, input_shape))}) and (n,) with n >= 1"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"data-path={path!r}: y must hold integer labels in [0, {num_classes})")
    return x.astype(np.float32), y.astype(np.int64)


def device_bundle(context: Context) -> str | None:
    """This device's key bundle, or None on a node without one (a simulation's)."""
    value = context.node_config.get("keys-dir")
    return None if value is None else str(value)


def node_bundle(context: Context) -> str:
    """This device's key bundle (``keys-dir`` in its node config: ``fedpriv supernode``
    sets it to the bundle it was started with)."""
    value = device_bundle(context)
    if value is None:
        raise ConfigError(
            "this node has no 'keys-dir' in its node config: start it with its bundle of "
            "`fedpriv keys init` (fedpriv supernode <dir>/device-<k>), not --insecure"
        )
    return value
