"""Swarm families whose peer 3 misses sync 2 on purpose: ``Crashing`` raises (an error
reply), ``Late`` answers after the relay stopped waiting (4 s in sync 2; the run's
round timeout elsewhere, so slow first syncs on a busy machine do not count as late)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import ClassVar

from flwr.app import Context, Message

from fedpriv.strategies.base import Handler
from fedpriv.strategies.swarm import SwarmFamily
from fedpriv.strategies.swarm.peer import SwarmPeer


class FaultyPeer(SwarmPeer):
    def __init__(self, config, layout, initial, mode: str) -> None:
        super().__init__(config, layout, initial)
        self.mode = mode

    def sync(self, msg: Message, context: Context) -> Message:
        party = int(context.node_config["partition-id"])
        if party == 3 and int(msg.content.config_records["config"]["round"]) == 2:
            if self.mode == "crash":
                raise RuntimeError("simulated crash of peer 3")
            time.sleep(10)  # past the relay's 4 s wait in sync 2
        return super().sync(msg, context)


class FaultySwarm(SwarmFamily):
    mode: ClassVar[str] = ""

    def client_handlers(self) -> Mapping[str, Handler]:
        assert self.layout is not None and self.initial is not None
        peer = FaultyPeer(self.config, self.layout, self.initial, self.mode)
        return {**peer.handlers(), **self.config.crypto.client_handlers(self.config)}  # type: ignore[dict-item]


class Crashing(FaultySwarm):
    family = "crashing_swarm"
    mode = "crash"


class Late(FaultySwarm):
    family = "late_swarm"
    mode = "late"

    def send(self, grid, ctx, message_type, contents, timeout=None):
        if message_type == "train.swarm" and ctx.history and len(ctx.history) == 1:
            timeout = 4.0  # sync 2
        return super().send(grid, ctx, message_type, contents, timeout)
