"""Which partition each node holds, where the engine itself assigned them.

Client sampling is seeded over nodes in partition order (node IDs are random per run),
so the server must know every node's partition before round 1. On a fleet only the
node knows it, and the horizontal warm-up asks every node. A simulation's engine made
the assignment itself: Flower's simulation registers the nodes and keeps a node ID ->
partition map (``vce_api._register_nodes``), and the in-process engine gives node k
partition k. :func:`engine_partitions` returns that map, so the warm-up contacts only
the sampled cohort, not the population.

Flower does not hand its map to the ServerApp, so :func:`recording_partitions` wraps
``_register_nodes`` for the length of a simulation run and keeps each map under the
link state the nodes were registered in, which the ServerApp's grid holds. The wrapper
checks the source of the Flower functions it relies on and fails loudly if they
changed.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from flwr.serverapp import Grid

from fedpriv.runtime.linkstate_index import source_digest

#: SHA-256 of the source of ``vce_api.<name>`` in flwr 1.41: ``_register_nodes`` makes
#: the map and ``start_vce`` calls it by its module name. A change: read Flower's new
#: code, follow it here, update the hash.
PINNED = {
    "_register_nodes": "88a1cb6749e876ed204b9b250b6846dae53e8a20a5df1f79cff060eacab9b998",
    "start_vce": "2d5e267f893950a709c52adf9d6a90c81a7750d889b4eb99318dfffeea957f16",
}

#: Seconds the server waits for Flower to finish recording the map once every node is
#: registered (Flower stores the last node, then returns the map).
RECORD_WAIT_S = 10.0

_recorded: weakref.WeakKeyDictionary[Any, dict[int, int]] = weakref.WeakKeyDictionary()
_changed = threading.Condition()
_active = threading.Event()
#: Flower's functions while the wrapper is on.
_original: dict[str, Any] = {}


def _vce_api() -> Any:
    from flwr.server.superlink.fleet.vce import vce_api

    return vce_api


def check_pinned() -> None:
    """Fail, naming the function, if Flower's code this wrapper depends on changed."""
    module = _vce_api()
    flowers = {name: _original.get(name) or getattr(module, name, None) for name in PINNED}
    changed = [
        name
        for name, digest in PINNED.items()
        if flowers[name] is None or source_digest(flowers[name]) != digest
    ]
    if changed:
        raise RuntimeError(
            f"Flower's simulation engine changed (vce_api.{', vce_api.'.join(changed)}): "
            "fedpriv.runtime.engine_partitions was written for flwr 1.41; follow the change "
            "there and update PINNED"
        )


@contextlib.contextmanager
def recording_partitions() -> Iterator[None]:
    """Within this block, keep the node -> partition map of every simulation started."""
    check_pinned()
    module = _vce_api()
    if _active.is_set():  # a nested block: the outer one records and restores
        yield
        return
    original = _original["_register_nodes"] = module._register_nodes

    def _register_nodes(num_nodes: int, state_factory: Any) -> dict[int, int]:
        mapping: dict[int, int] = original(num_nodes=num_nodes, state_factory=state_factory)
        with _changed:
            _recorded[state_factory.state()] = dict(mapping)
            _changed.notify_all()
        return mapping

    module._register_nodes = _register_nodes
    _active.set()
    try:
        yield
    finally:
        module._register_nodes = original
        _original.clear()
        _active.clear()


def engine_partitions(grid: Grid) -> dict[int, int] | None:
    """Node ID -> partition as the engine assigned them; None where only the nodes know
    (a deployed fleet, or a simulation not started by fedpriv)."""
    from fedpriv.runtime.inprocess import InProcessGrid

    if isinstance(grid, InProcessGrid):
        return grid.partitions()
    state = getattr(grid, "state", None)
    if state is None or not _active.is_set():
        return None
    with _changed:
        _changed.wait_for(lambda: state in _recorded, timeout=RECORD_WAIT_S)
        mapping = _recorded.get(state)
    return dict(mapping) if mapping is not None else None
