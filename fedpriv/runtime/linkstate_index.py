"""An index by destination node for the simulation's in-memory link state.

Flower's simulation engine asks its link state for each node's pending messages on
every tick (``get_message_ins(node_id, limit=1)`` for every node, ten times a second),
and ``InMemoryLinkState.get_message_ins`` answers by scanning every stored message and
checking each for expiry. With N nodes and M messages in flight that is N·M checks
per tick: at N = M = 1000 (every client in a round) seconds per sweep, on the GIL the
server and the replies need too. Flower offers no setting for it, so
:func:`indexed_linkstate` patches, for the length of one simulation run:

* ``__init__``: the state's message store becomes a :class:`MessagesByNode`, a dict
  that also keeps each destination's message IDs, in the order they were stored;
* ``get_message_ins``: the same loop as Flower's, over the asked node's IDs only.

Every message the original returns is one addressed to the node, so the answer is the
same, in the same order, with the same side effects on the messages it returns and on
the node's expired messages (tests compare both on the same inputs). Messages of other
nodes are checked for expiry when their node is asked, not on every node's turn. The
patch checks the source of the two methods against the Flower version it was written
for and fails loudly, naming what changed, if they differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import re
from collections.abc import Iterator
from typing import Any

from flwr.app import Message

#: SHA-256 of the source of the Flower methods this module replaces or relies on, as in
#: flwr 1.41 (``InMemoryLinkState.<name>``). A change means: read Flower's new code,
#: follow it here, then update the hash.
PINNED = {
    "__init__": "d50d022da60695f51607941289feb37bd794b16cc500b0c1b40a5adcb72b7981",
    "get_message_ins": "6547c8dcbc62e12f5b2aa5c69f4de8c7c7072c10d6c0876512cf37197d941056",
}


class MessagesByNode(dict[str, Message]):
    """Flower's message store (message ID -> message) that also keeps, per destination
    node, the IDs of its messages in the order they were stored."""

    def __init__(self, messages: dict[str, Message] | None = None) -> None:
        super().__init__()
        #: node ID -> its message IDs (a dict used as an ordered set).
        self.by_node: dict[int, dict[str, None]] = {}
        for key, message in (messages or {}).items():
            self[key] = message

    def ids_for(self, node_id: int) -> list[str]:
        """The IDs of the messages stored for ``node_id``, oldest first."""
        return list(self.by_node.get(node_id, ()))

    def __setitem__(self, key: str, message: Message) -> None:
        if key in self:
            self._forget(key)
        super().__setitem__(key, message)
        self.by_node.setdefault(message.metadata.dst_node_id, {})[key] = None

    def __delitem__(self, key: str) -> None:
        self._forget(key)
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self._forget(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Message]:
        key, message = super().popitem()
        self._forget_from(key, message)
        return key, message

    def clear(self) -> None:
        super().clear()
        self.by_node.clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, message in dict(*args, **kwargs).items():
            self[key] = message

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other: Any) -> MessagesByNode:  # type: ignore[override,misc]
        self.update(other)
        return self

    def _forget(self, key: str) -> None:
        self._forget_from(key, super().__getitem__(key))

    def _forget_from(self, key: str, message: Message) -> None:
        node = message.metadata.dst_node_id
        ids = self.by_node.get(node)
        if ids is not None:
            ids.pop(key, None)
            if not ids:
                del self.by_node[node]


def _linkstate_module() -> Any:
    from flwr.server.superlink.linkstate import in_memory_linkstate

    return in_memory_linkstate


#: Assignments to the message store in Flower's module: the index holds only while the
#: one in ``__init__`` is the only one (every other change goes through the dict).
_STORE_ASSIGNED = re.compile(r"self\.message_ins_store\s*(:[^=\n]*)?=[^=]")


def check_pinned() -> None:
    """Fail, naming the method, if Flower's code this patch depends on changed."""
    module = _linkstate_module()
    cls = module.InMemoryLinkState
    changed = []
    if len(_STORE_ASSIGNED.findall(inspect.getsource(module))) != 1:
        changed.append("message_ins_store assigned outside __init__")
    for name, digest in PINNED.items():
        method = _original.get(name) or getattr(cls, name, None)  # Flower's, patched or not
        if method is None:
            changed.append(f"{name} (gone)")
        elif source_digest(method) != digest:
            changed.append(name)
    if changed:
        raise RuntimeError(
            f"Flower's InMemoryLinkState changed ({', '.join(changed)}): "
            "fedpriv.runtime.linkstate_index was written for flwr 1.41; follow the change "
            "there (or stop applying the index) and update PINNED"
        )


def source_digest(function: Any) -> str:
    """SHA-256 of a function's source, as :data:`PINNED` holds it."""
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def get_message_ins(
    self: Any, node_id: int, limit: int | None, *, run_id: int | None = None
) -> list[Message]:
    """Flower's ``InMemoryLinkState.get_message_ins`` over the node's own messages."""
    store = self.message_ins_store
    if not isinstance(store, MessagesByNode):  # a state made before the patch
        return _original["get_message_ins"](self, node_id, limit, run_id=run_id)
    if limit is not None and limit < 1:
        raise AssertionError("`limit` must be >= 1")
    if node_id not in store.by_node:  # most nodes, most ticks: nothing to look at
        return []

    message_ins_list: list[Message] = []
    with self.lock:
        for msg_id in store.ids_for(node_id):
            self._check_stored_messages({msg_id})
            if (
                (msg_ins := store.get(msg_id))
                and msg_ins.metadata.dst_node_id == node_id
                and (run_id is None or msg_ins.metadata.run_id == run_id)
                and msg_ins.metadata.delivered_at == ""
            ):
                message_ins_list.append(msg_ins)
            if limit and len(message_ins_list) == limit:
                break

    if message_ins_list:  # the original stamps the time even for no message
        delivered_at = _linkstate_module().now().isoformat()
        for msg_ins in message_ins_list:
            msg_ins.metadata.delivered_at = delivered_at
    return message_ins_list


#: Flower's methods while the patch is on.
_original: dict[str, Any] = {}


@contextlib.contextmanager
def indexed_linkstate() -> Iterator[None]:
    """Within this block, in-memory link states made by Flower index their messages by
    destination node, and answer ``get_message_ins`` from that index."""
    check_pinned()
    cls = _linkstate_module().InMemoryLinkState
    if _original:  # already on (a nested block): the outer one restores
        yield
        return
    _original.update(__init__=cls.__init__, get_message_ins=cls.get_message_ins)
    original_init = _original["__init__"]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.message_ins_store = MessagesByNode(self.message_ins_store)

    cls.__init__, cls.get_message_ins = __init__, get_message_ins
    try:
        yield
    finally:
        cls.__init__, cls.get_message_ins = _original["__init__"], _original["get_message_ins"]
        _original.clear()
