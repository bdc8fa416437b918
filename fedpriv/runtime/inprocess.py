"""The in-process engine (``engine=inprocess``): a run's ServerApp and ClientApp in this
one process, without Ray.

The ServerApp is called the way Flower's simulation calls it
(``flwr.server.run_serverapp.run`` on a Grid), with the same ``Run``, task identity and
server ``Context``. Its Grid, :class:`InProcessGrid`, stands in for the SuperLink's
LinkState and Ray's actors: each node has its own ``Context`` (``partition-id`` and
``num-partitions`` in its node config, as Flower's simulation sets them, and a ``state``
kept across messages), and a pulled message is handed to ``client_app(message,
context)`` in this thread, one node after another. Messages, IDs and reply metadata are
Flower's own, so reply screening, byte counting and node state work unchanged.

What it cannot catch: nothing is pickled but the messages (handlers and their closures
never leave this process), nodes share this process' globals, and a handler that hangs
holds up the run (timeouts bound waiting, not work). Ray simulation checks those.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Iterable, Sequence
from typing import cast
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.clientapp.client_app import ClientAppException
from flwr.common.constant import (
    NODE_ID_NUM_BYTES,
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    RUN_ID_NUM_BYTES,
    SUPERLINK_NODE_ID,
    TASK_ID_NUM_BYTES,
    ErrorCode,
)
from flwr.server.run_serverapp import run as run_serverapp
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.date import now
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedpriv.config import EngineSpec
from fedpriv.runtime.simulation import quiet_flower

log = logging.getLogger("fedpriv")

#: What a node runs: a ``ClientApp``, or any callable with its signature.
NodeApp = Callable[[Message, Context], Message]
#: Which of the pending messages a pull answers, and in what order (default: all of
#: them, in the order they were pushed). Tests use it to script arrival orders.
DeliveryOrder = Callable[[list[Message]], list[Message]]


def _copy(message: Message) -> Message:
    """The message as the other side receives it: a copy, pickled as Ray ships it, so
    neither side can change what the other holds."""
    return cast(Message, pickle.loads(pickle.dumps(message)))


class InProcessGrid(Grid):
    """Flower's Grid over nodes that live in this process.

    Parameters
    ----------
    client_app
        What every node runs (the run's ``ClientApp``).
    num_nodes
        Nodes, holding partitions ``0 .. num_nodes - 1``.
    node_ids
        Their IDs (default: random, as a SuperLink draws them).
    order
        Which pending messages each pull answers (default: all, in push order).
    run
        The run the messages belong to (default: a fresh one; see :func:`new_run`).
    """

    def __init__(
        self,
        client_app: NodeApp,
        num_nodes: int,
        *,
        node_ids: Sequence[int] | None = None,
        order: DeliveryOrder | None = None,
        run: Run | None = None,
    ) -> None:
        if node_ids is None:
            taken = {SUPERLINK_NODE_ID, 0}
            node_ids = []
            for _ in range(num_nodes):
                node_ids.append(generate_rand_int_from_bytes(NODE_ID_NUM_BYTES, exclude=taken))
                taken.add(node_ids[-1])
        if len(set(node_ids)) != num_nodes:
            raise ValueError(f"node_ids={list(node_ids)}: expected {num_nodes} distinct IDs")
        self.client_app = client_app
        self.order = order
        self._run = run if run is not None else new_run()
        #: Each node's Context, kept across messages as a SuperNode keeps it.
        self.contexts = {
            node: Context(
                run_id=self._run.run_id,
                node_id=node,
                node_config={PARTITION_ID_KEY: partition, NUM_PARTITIONS_KEY: num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for partition, node in enumerate(node_ids)
        }
        self._pending: dict[str, Message] = {}
        self._replies: dict[str, Message] = {}

    # -- the run ----------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return Run(**vars(self._run))

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def partitions(self) -> dict[int, int]:
        """Node ID -> the partition its node config names."""
        return {node: int(c.node_config[PARTITION_ID_KEY]) for node, c in self.contexts.items()}

    # -- messages ---------------------------------------------------------------
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Give each message an ID and queue it for its node. A message the SuperLink's
        LinkState would refuse (a reply, an unknown node, another run) is logged and
        dropped: its ID is not returned."""
        ids = []
        for message in messages:
            meta = message.metadata
            meta.__dict__["_message_id"] = str(uuid4())
            if meta.reply_to_message_id or meta.delivered_at or not meta.ttl > 0:
                raise ValueError(f"Invalid message: {message}")
            if meta.dst_node_id not in self.contexts or meta.run_id != self._run.run_id:
                log.error("dropped a message to node %s in run %s", meta.dst_node_id, meta.run_id)
                continue
            self._pending[meta.message_id] = message
            ids.append(meta.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Deliver the pending messages among ``message_ids`` (those ``order`` picks)
        to their nodes, and return every reply to ``message_ids`` not yet pulled."""
        wanted = set(message_ids)
        asked = [m for i, m in self._pending.items() if i in wanted]
        for message in (self.order or list)(asked):
            del self._pending[message.metadata.message_id]
            self._deliver(message)
        answered = [i for i in self._replies if i in wanted]
        return [self._replies.pop(i) for i in answered]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull until every reply arrived, a pull brought none (nothing
        else can arrive: nodes only work inside a pull), or ``timeout`` passed."""
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            arrived = list(self.pull_messages(pending))
            replies += arrived
            pending -= {reply.metadata.reply_to_message_id for reply in arrived}
            if not arrived or (deadline is not None and time.monotonic() >= deadline):
                break
        return replies

    def _deliver(self, message: Message) -> None:
        """Run the node's app on a copy of ``message`` and keep a copy of its reply. An
        exception becomes an error reply, with the code and reason Flower's simulation
        gives it."""
        message.metadata.delivered_at = now().isoformat()
        node = message.metadata.dst_node_id
        try:
            reply = self.client_app(_copy(message), self.contexts[node])
        except Exception as error:
            wrapped = ClientAppException(str(error))
            log.error("node %s: %s", node, wrapped)
            reason = f"{type(wrapped)}:<'{wrapped}'>"
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reply = Message(Error(code=code, reason=reason), reply_to=message)
        reply = _copy(reply)
        meta = reply.metadata
        if meta.src_node_id != node or meta.reply_to_message_id != message.metadata.message_id:
            log.error("dropped node %s's reply: it does not answer its message", node)
            return
        meta.__dict__["_message_id"] = str(uuid4())
        meta.delivered_at = now().isoformat()
        self._replies[message.metadata.message_id] = reply


def new_run() -> Run:
    """A run as Flower's simulation makes one, with this process' task identity set to
    the SuperLink's (``Message`` reads it to stamp what the ServerApp sends)."""
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    return run


def run_inprocess(
    server_app: ServerApp, client_app: NodeApp, num_nodes: int, engine: EngineSpec
) -> None:
    """Run the apps to the end of the ServerApp's ``main`` in this process."""
    grid = InProcessGrid(client_app, num_nodes)
    context = Context(
        run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}
    )
    with quiet_flower(engine.verbose):
        run_serverapp(grid=grid, context=context, server_app_dir="", loaded_server_app=server_app)
