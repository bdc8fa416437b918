"""A deployed device's own copy of its resumable state (accountant history, counters),
on its own disk.

The server records each node's state as replies arrive (``spending.json``) and gives it
back when a run resumes. Left at that, a resumed device could be charged less than it
spent, two ways: it trained and replied while the ServerApp died (the reply sat in the
SuperLink, where whoever runs it can read the update, but never reached
``spending.json``), or the server gave back less than it received (a damaged record, or
a server that lies to get more updates out of the device's budget). So a node with
``state-dir`` in its node config writes its state there after every training reply,
and when a run resumes it starts from that copy and never takes back a state from the
server that does not extend it (:func:`fedpriv.runtime.checkpoint.extends`).

A family whose devices keep state the server must never read (a swarm peer's own model,
its DiNNO duals) keeps that here too, one file per round (:func:`save_private`), so a
resumed run starts each device from what it held after the round the server's checkpoint
follows (:func:`load_private`), not from a newer round the checkpoint never saw.

A copy belongs to one experiment: its file is named by the SHA-256 of the run config
``fedpriv run`` submitted (the config and the results directory), less the resume flag,
so a run and its resumes share it. A run that does not resume starts from nothing,
whatever the directory holds. Simulated nodes have no ``state-dir``: their server is
the researcher's own process.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message

from fedpriv.errors import FedprivError
from fedpriv.node import RESUME_KEY, partition_id
from fedpriv.results import write_atomic
from fedpriv.runtime.tree import TreeError, dumps, loads

#: The node-config key of the directory a device keeps its copies in.
STATE_DIR = "state-dir"
#: The setting a resumed run's first message to a node carries: the round its
#: checkpoint follows (the node takes back its own state after that round).
RESUME_AFTER = "resume-after"
FORMAT = 1

State = dict[str, dict[str, Any]]


class NodeStoreError(FedprivError, ValueError):
    """A device's own copy of its state cannot be read: resuming without it could charge
    the device less than it spent."""


def run_key(run_config: Mapping[str, Any]) -> str | None:
    """The experiment's key: the run config but its resume flag, hashed (None for a run
    without a run config, such as a simulation's nodes)."""
    identity = {key: value for key, value in run_config.items() if key != RESUME_KEY}
    if not identity:
        return None
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def resuming(context: Context) -> bool:
    return bool(context.run_config.get(RESUME_KEY))


def store_path(context: Context) -> Path | None:
    """This node's copy for this run's experiment; None without ``state-dir``."""
    directory = context.node_config.get(STATE_DIR)
    key = run_key(context.run_config)
    if directory is None or key is None:
        return None
    return Path(str(directory)).expanduser() / f"{key}-partition-{partition_id(context)}.json"


def load(context: Context) -> State | None:
    """The state this node last wrote for this experiment; None if it wrote none."""
    path = store_path(context)
    if path is None or not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError("not fedpriv's node state")
        state = payload["state"]
        if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
            raise ValueError("the state is not a mapping of records")
        return {str(name): dict(values) for name, values in state.items()}
    except (KeyError, TypeError, ValueError) as error:
        raise NodeStoreError(
            f"{path} is damaged ({error}); this device's own record of what it spent cannot "
            "be read, and resuming from the server's alone could charge it less. Move the "
            "file away only if that record is known to be lost."
        ) from error


def save(context: Context, state: State) -> None:
    """Replace this node's copy with ``state`` (atomically, readable by its owner only)."""
    path = store_path(context)
    if path is not None:
        _write_own(path, json.dumps({"format": FORMAT, "state": state}) + "\n")


def _write_own(path: Path, content: str | bytes) -> None:
    """Replace ``path`` atomically, in a folder and a file only this device's user reads."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, content, mode=0o600)


def resume_after(msg: Message) -> int:
    """The round whose state a resumed run's first message asks this node to take back
    (its ``config`` record's :data:`RESUME_AFTER`); 0: the run is not resuming."""
    record = msg.content.config_records.get("config")
    return 0 if record is None else int(record.get(RESUME_AFTER, 0))  # type: ignore[arg-type]


# -- state only the device reads, per round ----------------------------------------------


def _private_paths(context: Context) -> dict[int, Path]:
    """This node's private-state files for this experiment, by the round each follows."""
    path = store_path(context)
    if path is None or not path.parent.is_dir():
        return {}
    prefix = f"{path.stem}-round-"
    found = {}
    for file in path.parent.glob(f"{prefix}*.npz"):
        number = file.name[len(prefix) : -len(".npz")]
        if number.isdigit():
            found[int(number)] = file
    return found


def save_private(context: Context, server_round: int, records: list[str], rounds_kept: int) -> None:
    """Write the ``context.state`` records named in ``records`` as they are after
    ``server_round``, and delete the files no resume can ask for: those older than
    ``rounds_kept`` rounds (the run's ``checkpoint_every``; 0: no checkpoints, nothing
    written), but the newest of them (a device that missed rounds resumes from its last)."""
    path = store_path(context)
    if path is None or rounds_kept == 0:
        return
    state = context.state
    tree = {
        "arrays": {n: state.array_records[n] for n in records if n in state.array_records},
        "configs": {n: dict(state.config_records[n]) for n in records if n in state.config_records},
    }
    _write_own(path.with_name(f"{path.stem}-round-{server_round}.npz"), dumps(tree))
    files = _private_paths(context)
    older = sorted(r for r in files if r < server_round - rounds_kept)
    for stale in older[:-1]:
        files[stale].unlink(missing_ok=True)


def load_private(context: Context, server_round: int) -> bool:
    """Put back the records this node held after ``server_round`` (its newest file of a
    round up to it). False if it holds none: it had not trained by then."""
    if store_path(context) is None:
        raise NodeStoreError(
            "this run resumes from a checkpoint, and this device keeps no copy of its own "
            "state to resume from: start its SuperNode with --state-dir (fedpriv "
            "supernode does by default)"
        )
    candidates = {r: f for r, f in _private_paths(context).items() if r <= server_round}
    if not candidates:
        return False
    file = candidates[max(candidates)]
    try:
        tree = loads(file.read_bytes())
        arrays, configs = tree["arrays"], tree["configs"]
        for name, record in arrays.items():
            if not isinstance(record, ArrayRecord):
                raise TypeError(f"{name} is not an array record")
            context.state[name] = record
        for name, values in configs.items():
            context.state[name] = ConfigRecord(values)
    except (TreeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise NodeStoreError(
            f"{file} is damaged ({error}); this device's own state after round "
            f"{server_round} cannot be read"
        ) from error
    return True
