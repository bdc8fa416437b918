"""A CKKS scheme whose clients tamper with their ciphertexts on purpose, for rejection
tests. Its mod runs outside the real CKKS mod, so it changes what actually leaves a node.

Partition 0 sends a ciphertext truncated in transit (it cannot be deserialized);
partition 1 drops its last ciphertext (an update of the wrong length).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, Context, Message

from fedpriv.crypto import Ckks


def tamper(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]):
    reply = call_next(msg, context)
    pid = int(context.node_config["partition-id"])
    if not msg.metadata.message_type.startswith("train") or pid not in (0, 1):
        return reply
    arrays = reply.content["arrays"]
    names = sorted(name for name in arrays if name.startswith("ckks/"))  # the ciphertexts
    if pid == 0:
        first = arrays[names[0]]
        first.data = first.data[: len(first.data) // 2]
    else:
        reply.content["arrays"] = ArrayRecord({n: arrays[n] for n in arrays if n != names[-1]})
    return reply


@dataclasses.dataclass(frozen=True)
class TamperingCkks(Ckks):
    def client_mods(self, config: Any, secret: bytes | None, layout: Any) -> list[Any]:
        return [tamper, *super().client_mods(config, secret, layout)]
