"""Vertical families whose party 1 misbehaves on purpose, for rejection and dropout tests.

``Truncating``: at step 2 party 1 sends one embedding row too few. ``Crashing``: at
step 3 party 1 raises (Flower turns that into an error reply). ``Silent``: at step 3
party 1 stops answering for longer than the round timeout.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import ClassVar

from flwr.app import Context, Message

from fedpriv.strategies.base import Handler
from fedpriv.strategies.vertical import Vertical
from fedpriv.strategies.vertical.party import EMBEDDING, VerticalParty, one_array, values


class FaultyParty(VerticalParty):
    def __init__(self, config, mode: str) -> None:
        super().__init__(config)
        self.mode = mode

    def step(self, msg: Message, context: Context) -> Message:
        party = int(context.node_config["partition-id"])
        step = int(msg.content.config_records["config"]["step"])
        if party == 1 and step == 3 and self.mode == "crash":
            raise RuntimeError("simulated crash of party 1")
        if party == 1 and step == 3 and self.mode == "silent":
            time.sleep(12)  # past the 5 s round timeout
        reply = super().step(msg, context)
        if party == 1 and step == 2 and self.mode == "truncate":
            reply.content[EMBEDDING] = one_array(values(reply.content[EMBEDDING])[:-1])
        return reply


class FaultyVertical(Vertical):
    mode: ClassVar[str] = ""

    def client_handlers(self) -> Mapping[str, Handler]:
        return FaultyParty(self.config, self.mode).handlers()  # type: ignore[return-value]


class Truncating(FaultyVertical):
    family = "truncating_vertical"
    mode = "truncate"


class Crashing(FaultyVertical):
    family = "crashing_vertical"
    mode = "crash"


class Silent(FaultyVertical):
    family = "silent_vertical"
    mode = "silent"
