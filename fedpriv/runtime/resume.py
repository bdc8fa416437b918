"""Checkpoints out, and back in: write ``checkpoint.npz`` when a round is due, and
before a resumed run's first round give every node its own privacy state back."""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from fedpriv.errors import SimulationError
from fedpriv.runtime.checkpoint import RESTORE, SPENDING_FILE, Checkpoint, restore_content
from fedpriv.runtime.context import RunContext
from fedpriv.runtime.exchange import not_answered

log = logging.getLogger("fedpriv")


def save_checkpoint(
    ctx: RunContext, server_round: int, family_state: Any, last: bool = False, now: bool = False
) -> None:
    """Write ``checkpoint.npz`` when ``checkpoint_every`` says this round is due, and
    after the ``last`` round (the final model, for audits); ``now``: whatever
    ``checkpoint_every`` says (a Ctrl-C, to resume from). ``family_state`` None: the
    family cannot checkpoint (nothing is written)."""
    every = ctx.config.checkpoint_every
    due = now or (every and (not server_round % every or last))
    if family_state is None or not due:
        return
    Checkpoint(
        round=server_round,
        elapsed=ctx.clock.elapsed(),
        history=ctx.history,
        family_state=family_state,
        ledger=ctx.ledger.state(),
    ).save(ctx.out.path)


def resume(ctx: RunContext, grid: Grid) -> None:
    """Before the first resumed round: give each node its own partition's state back,
    the newest the server received (not the checkpoint's), and take what each
    partition last reported into the ledger."""
    assert ctx.checkpoint is not None
    spending = ctx.spending
    if spending.ledger is not None:  # newer than the checkpoint's: sent after it
        ctx.ledger.restore(spending.ledger)
    for partition, spent in sorted(spending.reported.items()):
        ctx.ledger.client_reported(partition, spent)
    if spending.states:
        _restore_nodes(ctx, grid)
    log.info("resumed after round %d of %d", ctx.checkpoint.round, ctx.config.rounds)


def _restore_nodes(ctx: RunContext, grid: Grid) -> None:
    """Ask the nodes not yet bound to a partition which one they hold, then send each
    node its partition's state alone."""
    spending, exchange = ctx.spending, ctx.exchange
    nodes = list(grid.get_node_ids())
    unbound = [node for node in nodes if node not in spending.partition_of]
    if unbound:
        replies = exchange.first_contact(grid, unbound, RESTORE)
        _all_answered(unbound, replies, "say which partition they hold")
    if spending.contested:
        raise SimulationError(
            f"partitions {sorted(spending.contested)} were claimed by two nodes each "
            f"(see {SPENDING_FILE} and the log); whose privacy history to give back cannot "
            "be told, so the run is not resumed"
        )
    holder_of = {p: n for n, p in spending.partition_of.items() if n in nodes}
    if missing := sorted(set(spending.states) - set(holder_of)):
        log.warning("no node holds partitions %s: their state is not restored", missing)
    messages = [
        Message(content=restore_content(p, state), dst_node_id=holder_of[p], message_type=RESTORE)
        for p, state in sorted(spending.states.items())
        if p in holder_of
    ]
    replies = exchange.send_and_receive(grid, messages, exchange.start_up_timeout)
    _all_answered([m.metadata.dst_node_id for m in messages], replies, "take their state back")


def _all_answered(nodes: list[int], replies: list[Message], what: str) -> None:
    if (unanswered := not_answered(nodes, replies)) is not None:
        count, reason = unanswered
        raise SimulationError(
            f"{count} of {len(nodes)} nodes did not {what} ({reason}); resuming without "
            "their state would restart their privacy accounting"
        )
