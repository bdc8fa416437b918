"""Checkpoints: what a killed run needs to continue exactly where it stopped.

Every ``checkpoint_every`` rounds the server replaces ``checkpoint.pkl`` in the results
directory (atomically) with: the round it follows, the history so far, the family's
state (the global model and the Flower strategy's own state, e.g. FedAdam's moments),
the server's privacy ledger, the server process's random states, and every client's
node state as the client last reported it. Node state is what a node keeps in
``context.state`` across rounds: its Opacus accountant history and its counters. A
resumed run sends each node its state back before the next round, so ε keeps
composing from what was spent, not from zero.

A checkpoint is a pickle: load only checkpoints your own runs wrote.
"""

from __future__ import annotations

import copyreg
import dataclasses
import io
import json
import pickle
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedpriv.errors import SimulationError
from fedpriv.results import write_atomic
from fedpriv.runtime.node import partition_id

CHECKPOINT_FILE = "checkpoint.pkl"
FORMAT = 1
#: The reply record that carries a node's state to the server (removed on arrival).
NODE_STATE = "node-state"
#: The message that gives a resumed run's nodes their state back.
RESTORE = "query.restore"
#: The ``context.state`` records a node needs to resume (accountant history, counters).
NODE_RECORDS = ("fedpriv", "fedpriv.dp")


@dataclasses.dataclass
class Checkpoint:
    """A run's state after ``round``; see the module docstring for what each part is."""

    round: int
    elapsed: float
    history: list[dict[str, Any]]
    family_state: Any
    ledger: dict[str, Any]
    node_states: dict[int, dict[str, dict[str, Any]]]
    random_states: dict[str, Any]

    def save(self, run_dir: Path) -> None:
        payload = {
            "format": FORMAT,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
        }
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        # Arrays that arrived over gRPC hold memoryviews (zero-copy), which pickle refuses.
        pickler.dispatch_table = {**copyreg.dispatch_table, memoryview: _as_bytes}
        pickler.dump(payload)
        write_atomic(run_dir / CHECKPOINT_FILE, buffer.getvalue())

    @classmethod
    def load(cls, run_dir: Path) -> Checkpoint | None:
        """The run's latest checkpoint, or None if it wrote none."""
        path = run_dir / CHECKPOINT_FILE
        if not path.is_file():
            return None
        payload = pickle.loads(path.read_bytes())
        if payload.pop("format", None) != FORMAT:
            raise SimulationError(f"{path} was written by another fedpriv version (format)")
        return cls(**payload)


def _as_bytes(view: memoryview) -> tuple[type[bytes], tuple[bytes]]:
    return bytes, (view.tobytes(),)


def random_states() -> dict[str, Any]:
    """The server process's global random generators (Flower's central-DP wrappers draw
    their noise from NumPy's), so a resumed run continues their streams."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def set_random_states(states: Mapping[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


# -- node state ------------------------------------------------------------------


def snapshot(context: Context) -> ConfigRecord:
    """This node's resumable state, flattened to one record (``<record>/<key>``)."""
    flat: dict[str, Any] = {"partition-id": partition_id(context)}
    for name in NODE_RECORDS:
        record = context.state.config_records.get(name)
        for key, value in (record or {}).items():
            flat[f"{name}/{key}"] = value
    return ConfigRecord(flat)


def unflatten(record: Mapping[str, Any]) -> tuple[int, dict[str, dict[str, Any]]]:
    """A snapshot back to ``(partition, {record name: {key: value}})``."""
    records: dict[str, dict[str, Any]] = {}
    for flat_key, value in record.items():
        if flat_key != "partition-id":
            name, _, key = flat_key.rpartition("/")
            records.setdefault(name, {})[key] = list(value) if isinstance(value, list) else value
    return int(record["partition-id"]), records


class NodeStateMod:
    """Flower client mod: attaches the node's state to each train reply, after the
    privacy mod has composed this round's spending."""

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type.startswith("train") and reply.has_content():
            reply.content[NODE_STATE] = snapshot(context)
        return reply


def restore_node(msg: Message, context: Context) -> Message:
    """The node side of :data:`RESTORE`: take this partition's state back."""
    states = json.loads(str(msg.content.config_records["states"]["json"]))
    for name, values in states.get(str(partition_id(context)), {}).items():
        context.state[name] = ConfigRecord(values)
    return Message(content=RecordDict(), reply_to=msg)


def harvest(replies: Iterable[Message], into: dict[int, dict[str, dict[str, Any]]]) -> None:
    """Take the node-state record off each reply (families never see it) into ``into``."""
    for reply in replies:
        if reply.has_error() or not reply.has_content():
            continue
        record = reply.content.config_records.get(NODE_STATE)
        if record is not None:
            del reply.content[NODE_STATE]
            partition, state = unflatten(record)
            into[partition] = state


def restore_message_content(states: Mapping[int, Mapping[str, Any]]) -> RecordDict:
    """Every node's state in one record; each node takes its own partition's entry."""
    encoded = json.dumps({str(k): v for k, v in states.items()})
    return RecordDict({"states": ConfigRecord({"json": encoded})})
