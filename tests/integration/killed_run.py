"""A run that is SIGKILLed, with its whole process group (Ray included), at a known point:
a real kill. Arguments are ``python -m fedpriv.experiments.run`` overrides (``resume=DIR`` too).

Environment variables:

* ``KILL_AFTER=k``: right after the server writes the checkpoint of round k.
* ``KILL_AFTER_REPLIES=k``: right after the server received the train replies of round
  k (between checkpoints when k is not a checkpoint round): the updates have reached
  the server, and the run dies before it writes another checkpoint.
* ``REPLY_LOG=FILE``: append one JSON line per train reply the server receives, with
  what it spent (``partition-id``, ``dp-noise-multiplier``, ``dp-sample-rate``,
  ``dp-steps``, ``delta``), read off the message before fedpriv's code sees it: the
  tests' independent record of every released update.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from fedpriv.runtime import exchange as run_exchange
from fedpriv.runtime.checkpoint import Checkpoint

SPENT_KEYS = ("partition-id", "dp-noise-multiplier", "dp-sample-rate", "dp-steps", "delta")


def die() -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def train_round(messages: list[Any]) -> int | None:
    """The server round of a train exchange (None: not one)."""
    for message in messages:
        if message.metadata.message_type.startswith("train"):
            return int(message.content.config_records["config"]["server-round"])
    return None


if "KILL_AFTER" in os.environ:
    kill_after = int(os.environ["KILL_AFTER"])
    save = Checkpoint.save

    def save_then_die(self: Checkpoint, run_dir):  # type: ignore[no-untyped-def]
        save(self, run_dir)
        if self.round == kill_after:
            die()

    Checkpoint.save = save_then_die  # type: ignore[method-assign]

if "REPLY_LOG" in os.environ:
    log_path = os.environ["REPLY_LOG"]
    push_and_pull = run_exchange.push_and_pull

    def logged_exchange(grid, messages, timeout):  # type: ignore[no-untyped-def]
        sent, replies = push_and_pull(grid, messages, timeout)
        if train_round(messages) is not None:
            with open(log_path, "a") as log:
                for reply in replies:
                    if reply.has_error() or "metrics" not in reply.content.metric_records:
                        continue
                    metrics = reply.content.metric_records["metrics"]
                    log.write(json.dumps({k: metrics.get(k) for k in SPENT_KEYS}) + "\n")
                log.flush()
                os.fsync(log.fileno())
        return sent, replies

    run_exchange.push_and_pull = logged_exchange  # type: ignore[assignment]

if "KILL_AFTER_REPLIES" in os.environ:
    kill_round = int(os.environ["KILL_AFTER_REPLIES"])
    send_and_receive = run_exchange.Exchange.send_and_receive

    def receive_then_die(self, grid, messages, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        replies = send_and_receive(self, grid, messages, timeout)
        if train_round(messages) == kill_round:
            die()
        return replies

    run_exchange.Exchange.send_and_receive = receive_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    from fedpriv.experiments.run import main

    sys.argv = ["killed_run", *sys.argv[1:]]
    main()
