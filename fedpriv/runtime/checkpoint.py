"""Checkpoints: what a killed run needs to continue where it stopped, in files that
cannot run code.

Every ``checkpoint_every`` rounds the server replaces ``checkpoint.npz`` in the results
directory (atomically, mode 0600) with: the round it follows, the history so far, the
family's state (the global model, the Flower strategy's own state such as FedAdam's
moments, an asynchronous rule's state) and the server's privacy ledger. The file is a
:mod:`fedpriv.runtime.tree`: JSON for the structure, arrays in the ``.npz``, read with
``allow_pickle=False``. A run directory is something people hand each other to audit,
so reading one must never run code: no pickle anywhere.

No process random state is saved. NumPy's global generator is where Flower's central
DP wrappers drew their noise; a file holding a noise generator's state would let its
reader redraw the noise and subtract it. The streams a resumed run needs to repeat
(client sampling) are seeded from the config and the round, or (asynchronous sampling)
kept by the family; none draws noise.

What each node spent is not in the checkpoint: the server records it as each reply
arrives (:mod:`fedpriv.runtime.spending`), so noisy updates received after the last
checkpoint are never forgotten.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedpriv.errors import FedprivError
from fedpriv.node import partition_id
from fedpriv.privacy.accounting import STATE_KEY as DP_RECORD
from fedpriv.results import write_atomic
from fedpriv.runtime import node_store
from fedpriv.runtime.node_store import State
from fedpriv.runtime.tree import TreeError, dumps, loads

log = logging.getLogger("fedpriv")

CHECKPOINT_FILE = "checkpoint.npz"
#: Each node's spending, written as replies arrive (:mod:`fedpriv.runtime.spending`).
SPENDING_FILE = "spending.json"
#: What fedpriv wrote before ``checkpoint.npz``: a pickle. It is never read.
LEGACY_FILE = "checkpoint.pkl"
FORMAT = 2
#: Flower strategy attributes that change while a run goes on (everything else is
#: built from the config): FedAvgM's momentum, FedOpt's moments, the model a strategy
#: measures updates from, an adaptive-clipping wrapper's norm. An allow-list, so no
#: generator or other object a strategy holds ever reaches a file.
FLOWER_STATE = ("current_arrays", "momentum_vector", "m_t", "v_t", "clipping_norm")


class CheckpointError(FedprivError, ValueError):
    """A checkpoint cannot be read (damaged, crafted, or an old pickle) or written."""


@dataclasses.dataclass
class Checkpoint:
    """A run's state after ``round``; see the module docstring for what each part is."""

    round: int
    elapsed: float
    history: list[dict[str, Any]]
    family_state: Any
    ledger: dict[str, Any]

    def save(self, run_dir: Path) -> None:
        payload = {
            "format": FORMAT,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
        }
        try:
            data = dumps(payload)
        except TreeError as error:
            raise CheckpointError(f"cannot write {run_dir / CHECKPOINT_FILE}: {error}") from error
        write_atomic(run_dir / CHECKPOINT_FILE, data, mode=0o600)

    @classmethod
    def load(cls, run_dir: Path) -> Checkpoint | None:
        """The run's latest checkpoint, or None if it wrote none. Never runs code.

        A run killed before its first checkpoint but after replies arrived gets a round-0
        checkpoint (no family state): it runs again from round 1, and its nodes get back
        what they spent (``spending.json``)."""
        path = run_dir / CHECKPOINT_FILE
        if not path.is_file():
            if (run_dir / LEGACY_FILE).exists():
                raise CheckpointError(
                    f"{run_dir / LEGACY_FILE} is a pickle checkpoint (from fedpriv before "
                    f"{CHECKPOINT_FILE}); it is not read, since unpickling a file runs the "
                    "code it names. Run the experiment again, or delete the file to resume "
                    "from round 1"
                )
            if (run_dir / SPENDING_FILE).is_file():
                return cls(round=0, elapsed=0.0, history=[], family_state=None, ledger={})
            return None
        try:
            payload = loads(path.read_bytes())
        except TreeError as error:
            raise CheckpointError(
                f"{path} is damaged or not a fedpriv checkpoint: {error}"
            ) from error
        return cls._checked(payload, path)

    @classmethod
    def _checked(cls, payload: Any, path: Path) -> Checkpoint:
        """The checkpoint in ``payload``, its fields' types checked (a crafted file fails here)."""
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else None
            raise CheckpointError(
                f"{path} is not a fedpriv checkpoint of format {FORMAT} (format: {found!r})"
            )
        types: dict[str, type | tuple[type, ...]] = {
            "round": int, "elapsed": (int, float), "history": list, "ledger": dict,
        }  # fmt: skip
        problems = [
            f"{name} must be {getattr(kind, '__name__', 'a number')}"
            for name, kind in types.items()
            if not isinstance(payload.get(name), kind) or isinstance(payload.get(name), bool)
        ]
        if "family_state" not in payload:
            problems.append("family_state is missing")
        if problems:
            raise CheckpointError(f"{path} is not a fedpriv checkpoint: {'; '.join(problems)}")
        fields = {f.name: payload[f.name] for f in dataclasses.fields(cls)}
        fields["elapsed"] = float(fields["elapsed"])
        return cls(**fields)


def flower_state(strategy: Any) -> list[dict[str, Any]]:
    """The changing state of a Flower strategy and of each strategy it wraps (DP
    wrappers hold the next one in ``.strategy``): :data:`FLOWER_STATE` only."""
    layers = []
    while strategy is not None:
        state = {name: getattr(strategy, name) for name in FLOWER_STATE if hasattr(strategy, name)}
        layers.append({"class": type(strategy).__name__, "state": state})
        strategy = getattr(strategy, "strategy", None)
    return layers


def restore_flower_state(strategy: Any, layers: Any) -> None:
    """Put :func:`flower_state`'s values back into ``strategy``, freshly built from the
    same config; a checkpoint of another strategy chain is an error."""
    built = flower_state(strategy)
    saved = [layer.get("class") if isinstance(layer, dict) else None for layer in layers]
    if saved != [layer["class"] for layer in built]:
        raise CheckpointError(
            f"the checkpoint holds the state of Flower strategies {saved}, but this "
            f"config builds {[layer['class'] for layer in built]}"
        )
    for layer in layers:
        state = layer.get("state")
        if not isinstance(state, dict) or not set(state) <= set(FLOWER_STATE):
            raise CheckpointError(f"the checkpoint's {layer['class']} state is malformed")
        for name, value in state.items():
            setattr(strategy, name, value)
        strategy = getattr(strategy, "strategy", None)


# -- node state: what a node keeps in context.state across rounds --------------------

#: The reply record that carries a node's state to the server (removed on arrival).
NODE_STATE = "node-state"
#: The message that gives a resumed run's nodes their state back (and, without a
#: state, asks a node which partition it holds).
RESTORE = "query.restore"
#: The ``context.state`` records a node needs to resume (accountant history, counters).
NODE_RECORDS = ("fedpriv", "fedpriv.dp")
#: The key of the partition a node-state record is for.
PARTITION = "partition-id"


def snapshot(context: Context) -> ConfigRecord:
    """This node's resumable state, flattened to one record (``<record>/<key>``)."""
    flat: dict[str, Any] = {PARTITION: partition_id(context)}
    for name in NODE_RECORDS:
        record = context.state.config_records.get(name)
        for key, value in (record or {}).items():
            flat[f"{name}/{key}"] = value
    return ConfigRecord(flat)


def unflatten(record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A snapshot's records back to ``{record name: {key: value}}`` (its partition left out)."""
    records: dict[str, dict[str, Any]] = {}
    for flat_key, value in record.items():
        name, _, key = flat_key.rpartition("/")
        if flat_key != PARTITION and name in NODE_RECORDS:
            records.setdefault(name, {})[key] = list(value) if isinstance(value, list) else value
    return records


def node_state(context: Context) -> State:
    """This node's resumable records in ``context.state``, ``{record: {key: value}}``."""
    return unflatten(snapshot(context))


def adopt(context: Context, state: State) -> None:
    for name, values in state.items():
        context.state[name] = ConfigRecord(values)


class NodeStateMod:
    """Flower client mod: attaches the node's state to each train reply, after the
    privacy mod has composed this round's spending, and on a device keeps its own copy
    (:mod:`fedpriv.runtime.node_store`): written after each train reply, and taken
    back first when a run resumes."""

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        # A resumed run's first message finds the node empty: start from its own copy.
        # Later ones find what it adopted or trained since, never older than the copy.
        fresh = node_store.resuming(context) and not node_state(context)
        if fresh and (own := node_store.load(context)) is not None:
            adopt(context, own)
        reply = call_next(msg, context)
        if msg.metadata.message_type.startswith("train") and reply.has_content():
            reply.content[NODE_STATE] = snapshot(context)
            node_store.save(context, node_state(context))
        return reply


def extends(new: State, old: State) -> bool:
    """Whether ``new`` spent at least what ``old`` did: ``old``'s accountant history is
    a prefix of ``new``'s (its last entry may have more steps, as Opacus merges steps of
    the same σ and q), and no fewer rounds were trained (a late reply has fewer)."""
    old_history, new_history = _history(old), _history(new)
    if old_history is None or new_history is None or len(new_history) < len(old_history):
        return False
    for i, (was, now) in enumerate(zip(old_history, new_history, strict=False)):
        last = i == len(old_history) - 1
        if was[:2] != now[:2] or (now[2] < was[2] if last else now[2] != was[2]):
            return False
    return _rounds(new) >= _rounds(old)


def _history(state: State) -> list[tuple[float, float, int]] | None:
    """The accountant history in a state ([] without DP), None if malformed."""
    record = state.get(DP_RECORD, {})
    try:
        columns = [record.get(k, []) for k in ("noise_multipliers", "sample_rates", "steps")]
        return [(float(s), float(q), int(n)) for s, q, n in zip(*columns, strict=True)]
    except (TypeError, ValueError):
        return None


def _rounds(state: State) -> int:
    value = state.get("fedpriv", {}).get("rounds_trained", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def restore_content(partition: int, state: Mapping[str, Mapping[str, Any]]) -> RecordDict:
    """One node's :data:`RESTORE` message: its own partition's state, nobody else's."""
    flat: dict[str, Any] = {PARTITION: partition}
    for name, values in state.items():
        for key, value in values.items():
            flat[f"{name}/{key}"] = value
    return RecordDict({NODE_STATE: ConfigRecord(flat)})


def restore_node(msg: Message, context: Context) -> Message:
    """The node side of :data:`RESTORE`: without a state, say which partition this node
    holds; with one, take it back (only if it is this node's partition's)."""
    own = partition_id(context)
    record = msg.content.config_records.get(NODE_STATE)
    if record is not None:
        if (claimed := record.get(PARTITION)) != own:
            raise ValueError(
                f"the restore message holds partition {claimed!r}'s state, and this node "
                f"holds partition {own}"
            )
        given, held = unflatten(record), node_state(context)
        if extends(given, held):
            adopt(context, given)
        else:  # the server gives back less than this node spent: keep the node's own
            log.warning(
                "the server's record of partition %d's spending does not extend this "
                "node's own; keeping the node's (nothing it spent is forgotten)",
                own,
            )
    return Message(content=RecordDict({"metrics": MetricRecord({PARTITION: own})}), reply_to=msg)
