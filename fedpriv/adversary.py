"""Malicious clients (``adversary=<name>``), so robust strategies can be compared under attack.

A seeded ``fraction`` of the clients (listed in ``clients.json`` as ``adversaries``)
attack; the others are honest. The attacks:

* ``label_flip``: trains honestly on poisoned labels (class c becomes C - 1 - c).
* ``sign_flip``: sends its update reversed and boosted, ``global - factor × (local - global)``.
* ``scale``: sends its update boosted, ``global + factor × (local - global)`` (model
  replacement when the factor is about the number of clients).
* ``noise``: trains nothing and sends the global model plus Gaussian noise of ``std``.

The update attacks run as a Flower client mod around training, inside encryption (an
encrypted malicious update is still malicious), outside the privacy mods: an attacker
does not clip and noise what it wants to do.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from fedpriv.node import partition_id
from fedpriv.registry import Registry, Spec
from fedpriv.training import seed_for

ADVERSARIES: Registry[AdversarySpec] = Registry("adversary")
#: Mixed into the run's seed to choose the attacking clients.
CHOOSE_ADVERSARIES = 3
ARRAYS = "arrays"
#: A model as named NumPy arrays.
State = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class AdversarySpec(Spec):
    """Which clients attack; subclasses say how."""

    #: Fraction of the clients that attack (rounded to the nearest count).
    fraction: float = 0.2

    #: Whether the attack changes the update after training (a client mod).
    changes_update: ClassVar[bool] = False

    def problems(self) -> list[tuple[str, str]]:
        if not 0.0 <= self.fraction <= 1.0:
            return [("fraction", "must be in [0, 1]")]
        return []

    def attackers(self, num_clients: int, seed: int) -> list[int]:
        """The partitions that attack, chosen with the run's seed."""
        if self.name == "none":
            return []
        count = math.floor(self.fraction * num_clients + 0.5)
        rng = np.random.default_rng(seed_for(seed, CHOOSE_ADVERSARIES))
        return sorted(int(p) for p in rng.choice(num_clients, size=count, replace=False))

    def poison_labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        """The labels an attacker trains on (honest: unchanged)."""
        return y

    def tamper(self, global_state: State, local: State, rng: np.random.Generator) -> State:
        """The model an attacker sends instead of ``local``."""
        return local

    def client_mods(self, config: Any) -> list[Callable[..., Any]]:
        if not self.changes_update:
            return []
        return [AdversaryMod(self, self.attackers(config.num_clients, config.seed), config.seed)]


@ADVERSARIES.register("none")
@dataclasses.dataclass(frozen=True)
class NoAdversary(AdversarySpec):
    """Every client is honest."""

    fraction: float = 0.0


@ADVERSARIES.register("label_flip")
@dataclasses.dataclass(frozen=True)
class LabelFlip(AdversarySpec):
    def poison_labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        return (num_classes - 1 - y).astype(y.dtype)


@dataclasses.dataclass(frozen=True)
class Boosted(AdversarySpec):
    """An attacker that sends ``direction × factor`` times its own update."""

    #: How many times its own update an attacker sends.
    factor: float = 10.0
    #: +1: boosted (``scale``); -1: reversed (``sign_flip``).
    direction: ClassVar[int] = 1
    changes_update: ClassVar[bool] = True

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not self.factor > 0:
            out.append(("factor", "must be > 0"))
        return out

    def tamper(self, global_state: State, local: State, rng: np.random.Generator) -> State:
        boost = self.direction * self.factor
        return {k: global_state[k] + boost * (local[k] - global_state[k]) for k in local}


@ADVERSARIES.register("sign_flip")
@dataclasses.dataclass(frozen=True)
class SignFlip(Boosted):
    direction: ClassVar[int] = -1


@ADVERSARIES.register("scale")
@dataclasses.dataclass(frozen=True)
class Scale(Boosted):
    direction: ClassVar[int] = 1


@ADVERSARIES.register("noise")
@dataclasses.dataclass(frozen=True)
class Noise(AdversarySpec):
    #: Standard deviation of the Gaussian noise added to the global model.
    std: float = 1.0
    changes_update: ClassVar[bool] = True

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not self.std > 0:
            out.append(("std", "must be > 0"))
        return out

    def tamper(self, global_state: State, local: State, rng: np.random.Generator) -> State:
        return {
            k: global_state[k] + rng.normal(0.0, self.std, v.shape).astype(v.dtype)
            for k, v in global_state.items()
        }


class AdversaryMod:
    """Flower client mod: an attacking partition's reply carries the tampered model."""

    def __init__(self, spec: AdversarySpec, attackers: list[int], seed: int) -> None:
        self.spec = spec
        self.attackers = set(attackers)
        self.seed = seed

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        if not msg.metadata.message_type.startswith("train"):
            return call_next(msg, context)
        pid = partition_id(context)
        received = msg.content.array_records.get(ARRAYS)
        global_state = None if received is None else _numpy(received)
        reply = call_next(msg, context)
        if pid not in self.attackers or global_state is None or reply.has_error():
            return reply
        sent = reply.content.array_records.get(ARRAYS)
        if sent is None:
            return reply
        server_round = int(msg.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
        rng = np.random.default_rng(seed_for(self.seed, CHOOSE_ADVERSARIES, server_round, pid))
        tampered = self.spec.tamper(global_state, _numpy(sent), rng)
        reply.content[ARRAYS] = ArrayRecord({k: Array(np.asarray(v)) for k, v in tampered.items()})
        return reply


def _numpy(record: ArrayRecord) -> State:
    return {name: array.numpy() for name, array in record.items()}
