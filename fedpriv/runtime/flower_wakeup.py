"""Wake-ups instead of polling in Flower's simulation engine.

In Flower 1.41's simulation, messages between the ServerApp and the ClientApp actors
pass through an in-memory LinkState, and two loops poll it: the engine looks for new
messages every 0.1 s (``vce_api.add_messages_to_queue``), and fedpriv's exchange looked
for replies every 50 ms. Every exchange paid both waits; a vertical run makes two
exchanges per batch. Flower has no setting or event for either, so :func:`wake_on_store`
swaps, for the length of one run, two engine functions and wraps one Grid method:

* ``InMemoryGrid.push_messages`` rings a :class:`Doorbell` once the ServerApp's
  messages are stored;
* ``vce_api.add_messages_to_queue`` looks for messages at that ring, not only every
  0.1 s;
* ``vce_api.put_message_into_state`` rings a second doorbell once a reply is stored,
  which fedpriv's exchange waits on (:func:`reply_doorbell`).

Each wait still ends after Flower's own tick, so a missed ring costs what polling cost,
never a hang. Each Flower function touched is pinned by a hash of its source; if one
changed, the run stops before it starts with an error naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import threading
from collections.abc import Callable, Iterable, Iterator
from queue import Empty, Queue
from typing import Any

#: The longest the engine's loop waits without a ring: Flower's own tick. Its stop event
#: (the run's end) is therefore seen within 0.1 s, where Flower's wait saw it at once.
ENGINE_TICK_S = 0.1

#: What this module relies on, by the first 16 hex digits of the SHA-256 of its source
#: in flwr 1.41.0: ``vce_api`` is ``flwr.server.superlink.fleet.vce.vce_api``, whose two
#: loops are replaced and whose ``run_api`` calls them by their module names with the
#: arguments the replacements take; ``InMemoryGrid`` (``flwr.superlink.grid.inmemory_grid``)
#: stores the ServerApp's messages in the LinkState the engine reads.
PINNED: dict[str, str] = {
    "vce_api.add_messages_to_queue": "953f4bd41a931a77",
    "vce_api.put_message_into_state": "3622eb5bfcd9cd1a",
    "vce_api.run_api": "f85c0cd6e902752f",
    "InMemoryGrid.push_messages": "9c70a8cd6475a3d7",
}


class Doorbell:
    """Rung when a message is stored; a waiter sleeps until it rings or a timeout passes.

    Take a :meth:`mark` before looking for messages, then :meth:`wait` on it: a ring
    that came in between counts, so no message is slept through.
    """

    def __init__(self) -> None:
        self._rung = threading.Condition()
        self._rings = 0

    def mark(self) -> int:
        with self._rung:
            return self._rings

    def ring(self) -> None:
        with self._rung:
            self._rings += 1
            self._rung.notify_all()

    def wait(self, mark: int, timeout: float, rings: int = 1) -> bool:
        """Block until ``rings`` rings after ``mark``, or ``timeout`` seconds; True if
        they came. Waiting for as many rings as replies are pending wakes a server once
        per exchange, not once per reply (at N = 100, a pull per reply cost more than
        the 50 ms poll it replaced)."""
        with self._rung:
            return self._rung.wait_for(lambda: self._rings - mark >= rings, timeout)


@dataclasses.dataclass
class _Bells:
    to_nodes: Doorbell = dataclasses.field(default_factory=Doorbell)
    to_server: Doorbell = dataclasses.field(default_factory=Doorbell)


#: The doorbells of the simulation running now (None outside :func:`wake_on_store`).
_active: _Bells | None = None


def _flower() -> dict[str, Any]:
    """The Flower objects :data:`PINNED` names, by the names it gives them."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    return {"vce_api": vce_api, "InMemoryGrid": InMemoryGrid}


def _source_hash(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def check_pins() -> None:
    """Raise if a Flower function this module relies on is missing or changed."""
    import flwr

    owners = _flower()
    changed = []
    for name, pinned in PINNED.items():
        owner, attr = name.split(".")
        try:
            found = _source_hash(getattr(owners[owner], attr))
        except (AttributeError, OSError, TypeError) as error:
            found = f"unreadable: {error}"
        if found != pinned:
            changed.append(f"{name} (pinned {pinned}, found {found})")
    if changed:
        raise RuntimeError(
            f"Flower {flwr.__version__} changed what fedpriv.runtime.flower_wakeup patches: "
            + "; ".join(changed)
            + ". Re-read those functions, bring the replacements in flower_wakeup.py in "
            "line with them (or drop the patch), then update PINNED."
        )


def _extractor(bell: Doorbell) -> Callable[..., None]:
    def add_messages_to_queue(
        state: Any, queue: Queue[Any], nodes_mapping: dict[int, int], f_stop: threading.Event
    ) -> None:
        """Flower's loop (each node's next message onto the workers' queue), woken by
        the grid's ring as well as every 0.1 s. A look scans every stored message for
        every node, so it looks once per ring, never more often than Flower did."""
        while not f_stop.is_set():
            mark = bell.mark()
            for node_id in nodes_mapping:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
            bell.wait(mark, ENGINE_TICK_S)

    return add_messages_to_queue


def _injector(bell: Doorbell) -> Callable[..., None]:
    def put_message_into_state(state: Any, queue: Queue[Any], f_stop: threading.Event) -> None:
        """Flower's loop (store the actors' replies), ringing once each is stored."""
        while not f_stop.is_set():
            try:
                reply = queue.get(timeout=1.0)
            except Empty:
                continue
            state.store_message_res(reply)
            bell.ring()

    return put_message_into_state


def _ringing(push: Callable[..., Iterable[str]], bell: Doorbell) -> Callable[..., Iterable[str]]:
    @functools.wraps(push)
    def push_messages(self: Any, messages: Iterable[Any]) -> Iterable[str]:
        try:
            return push(self, messages)
        finally:
            bell.ring()

    return push_messages


@contextlib.contextmanager
def wake_on_store() -> Iterator[None]:
    """Within this block, Flower's simulation engine and fedpriv's exchange wake when a
    message is stored instead of polling. Raises before patching anything if Flower
    changed (:func:`check_pins`); restores Flower's functions on the way out."""
    global _active
    if _active is not None:  # already on (a run inside a run): the outer block restores
        yield
        return
    check_pins()
    owners = _flower()
    vce_api, grid = owners["vce_api"], owners["InMemoryGrid"]
    saved = (vce_api.add_messages_to_queue, vce_api.put_message_into_state, grid.push_messages)
    bells = _Bells()
    vce_api.add_messages_to_queue = _extractor(bells.to_nodes)
    vce_api.put_message_into_state = _injector(bells.to_server)
    grid.push_messages = _ringing(saved[2], bells.to_nodes)
    _active = bells
    try:
        yield
    finally:
        vce_api.add_messages_to_queue, vce_api.put_message_into_state = saved[:2]
        grid.push_messages = saved[2]
        _active = None


def reply_doorbell(grid: object) -> Doorbell:
    """The doorbell rung when a reply for ``grid`` is stored: during
    :func:`wake_on_store`, that of Flower's in-memory Grid. Any other Grid (a
    SuperLink's over gRPC, the in-process engine's) gets one nobody rings, so waiting
    on it is a plain sleep of its timeout: polling, as before."""
    bells = _active
    if bells is not None and isinstance(grid, _flower()["InMemoryGrid"]):
        return bells.to_server
    return Doorbell()
