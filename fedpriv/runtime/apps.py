"""Build the Flower ServerApp and ClientApp of an experiment.

Both are built from the same strategy object, so a simulation and a deployment run the
same code. The ServerApp hands its history back through ``on_done``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedpriv.errors import FedprivError
from fedpriv.runtime.checkpoint import RESTORE, NodeStateMod, restore_node
from fedpriv.runtime.context import RunContext
from fedpriv.telemetry import DeviceMonitor

if TYPE_CHECKING:  # the interface the families implement, one layer up
    from fedpriv.strategies.base import Handler, Strategy

log = logging.getLogger("fedpriv")

#: The metric record every family's replies carry.
METRICS = "metrics"


class _NodeHandler:
    """A handler as a node runs it: torch's threads capped first (None: torch's
    default), and with ``telemetry.device`` the device measured while it works, the
    measurements added to the reply's metrics."""

    def __init__(self, handler: Handler, threads: int | None, telemetry: bool) -> None:
        self.handler = handler
        self.threads = threads
        self.telemetry = telemetry

    def __call__(self, msg: Message, context: Context) -> Message:
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        if not self.telemetry:
            return self.handler(msg, context)
        with DeviceMonitor() as monitor:
            reply = self.handler(msg, context)
        if reply.has_content() and METRICS in reply.content.metric_records:
            reply.content.metric_records[METRICS].update(monitor.metrics())
        return reply


def build_client_app(
    strategy: Strategy, crypto_mods: Sequence[Callable[..., Any]] = ()
) -> ClientApp:
    """A ClientApp routing each message type to the strategy's node-side handler.

    ``crypto_mods`` (from ``config.crypto.client_mods``, holding the clients' keys) run
    outermost: they decrypt before anything else sees a message and encrypt last. A
    family that checkpoints gets :class:`NodeStateMod` outside the privacy mods, so the
    node state it reports includes this round's accounting. Attacking clients
    (``adversary``) tamper with their update inside encryption, outside privacy.
    """
    config = strategy.config
    checkpoints = [NodeStateMod()] if strategy.can_resume and config.checkpoint_every else []
    app = ClientApp(
        mods=[
            *crypto_mods,
            *checkpoints,
            *config.adversary.client_mods(config),
            *config.privacy.client_mods(config),
        ]
    )
    threads, telemetry = config.engine.torch_threads, config.telemetry.device
    handlers = dict(strategy.client_handlers())
    if checkpoints:
        handlers[RESTORE] = restore_node
    for message_type, handler in handlers.items():
        category, _, action = message_type.partition(".")
        if category not in ("train", "evaluate", "query"):
            raise ValueError(
                f"handler for {message_type!r}: Flower message types are "
                "train[.<name>], evaluate[.<name>] or query[.<name>]"
            )
        register = getattr(app, category)
        register(action or "default")(_NodeHandler(handler, threads, telemetry))
    return app


def build_server_app(
    strategy: Strategy,
    make_context: Callable[[], RunContext],
    on_done: Callable[[list[dict[str, Any]], RunContext], None],
    on_error: Callable[[FedprivError], None],
) -> ServerApp:
    """A ServerApp that runs the strategy's loop on the grid it is given; a fedpriv error
    (e.g. entity alignment failed) goes to ``on_error`` for the caller to raise."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        ctx = make_context()
        try:
            history = strategy.run(grid, ctx)
        except FedprivError as error:
            log.error("the run stopped: %s", error)
            on_error(error)
            return
        on_done(history, ctx)

    return app
