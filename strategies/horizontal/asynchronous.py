"""Asynchronous horizontal strategies: the server updates the model as replies arrive.

Each strategy is a spec with a server rule on flat float64 model vectors; the driver
(:mod:`strategies.horizontal.async_family`) keeps every client busy and feeds the rule
the replies in arrival order, with no barrier between clients.

* ``fedasync`` (Xie et al. 2019): every arrival is mixed into the model at once,
  ``w ← (1 - α·s(τ))·w + α·s(τ)·x``, where τ (staleness) counts the model versions
  applied since the client's base model was sent.
* ``fedbuff`` (Nguyen et al. 2022): the server buffers ``buffer_size`` arrivals and
  then steps ``w ← w + η·Σ s(τ_k)·Δ_k / K`` on the clients' updates Δ = x - base; the
  one rule here that also runs under CKKS (a scale-and-add on ciphertexts).
* ``easgd`` (Zhang et al. 2015, asynchronous form): each client keeps its own model;
  after training it moves ``rho`` of the way toward the center it received, and the
  server adds that same difference to the center (opposite signs, one elastic force).
* ``bmuf`` (Chen & Huo 2016): the mean update of a block of arrivals is filtered with
  block momentum, ``D ← m·D + ζ·G``, ``W ← W + D``; with Nesterov the clients start
  from the look-ahead ``W + m·D``.

``max_staleness`` drops older updates; ``delay_compensation`` λ corrects an update for
the model's drift since its base, first order as DC-ASGD (Zheng et al. 2017) does for
gradients: ``Δ ← Δ - λ·Δ⊙Δ⊙(w - base)`` (its diagonal ``Δ⊙Δ`` stands in for the
Hessian), at three element-wise products per update.

Staleness τ counts the model versions applied since an update's base was sent: 0 for
a fresh update, whose weight s(0) is 1. (Xie et al. count from 1, so their fresh
update weighs 2^-a under the polynomial; here that constant is part of α.)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, Context
from torch import nn

from fedpriv.strategies.horizontal.specs import HORIZONTAL_STRATEGIES, HorizontalSpec, StateDict

#: The ``context.state`` record in which an EASGD node keeps its own model.
ELASTIC_MODEL = "fedpriv.elastic"

STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")


def staleness_weight(kind: str, staleness: int, a: float, b: int) -> float:
    """The weight of an update ``staleness`` versions old (Xie et al.'s s(τ)): constant
    1; polynomial ``(τ + 1)^-a``; hinge 1 up to ``b`` versions, then ``1 / (a(τ - b) + 1)``."""
    if staleness < 0:
        raise ValueError(f"staleness={staleness} must be >= 0")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((staleness + 1) ** -a)
    if kind == "hinge":
        return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1.0)
    raise ValueError(f"staleness={kind!r} must be one of: {', '.join(STALENESS_FUNCTIONS)}")


def compensate(update: np.ndarray, drift: np.ndarray, strength: float) -> np.ndarray:
    """``update`` corrected first order for ``drift`` (current model - base model)."""
    if strength == 0:
        return update
    return update - strength * update * update * drift


@dataclasses.dataclass
class Arrival:
    """One client's update as the server applies it."""

    base: np.ndarray  # the model the client started from
    local: np.ndarray  # the model it sent back
    staleness: int

    @property
    def update(self) -> np.ndarray:
        return self.local - self.base


@dataclasses.dataclass
class ServerState:
    """What an asynchronous server holds between arrivals."""

    #: The model clients receive.
    model: np.ndarray
    #: Model versions applied so far (staleness is measured in these).
    version: int = 0
    #: Arrivals per model step (1: every arrival steps it).
    block: int = 1
    #: Arrivals waiting for the block to fill (fedbuff, bmuf).
    buffer: list[Arrival] = dataclasses.field(default_factory=list)
    #: BMUF: the block-level model W and its momentum D.
    anchor: np.ndarray | None = None
    momentum: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class AsyncSpec(HorizontalSpec):
    """Settings every asynchronous strategy shares.

    ``fraction_train`` is the share of clients training at any time (FedBuff's
    concurrency); the others wait idle until a running client's update arrives.
    """

    linear: ClassVar[bool] = False
    uniform_mean: ClassVar[bool] = False
    asynchronous: ClassVar[bool] = True
    #: True when the server step is a sum of plaintext multiples of the updates, which
    #: a server can compute on ciphertexts (:meth:`update_factor`).
    additive: ClassVar[bool] = False

    #: Client updates applied between two evaluations (a "round"); None: num_clients.
    updates_per_round: int | None = None
    staleness: str = "constant"
    #: Polynomial exponent, or the hinge's slope after ``staleness_b``.
    staleness_a: float = 0.5
    #: Versions the hinge lets through at full weight.
    staleness_b: int = 4
    #: Updates more versions old than this are dropped; None: none dropped.
    max_staleness: int | None = None
    #: λ of the first-order delay compensation (0: off).
    delay_compensation: float = 0.0

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.updates_per_round is not None and self.updates_per_round < 1:
            out.append(("updates_per_round", "must be >= 1 or null (num_clients)"))
        if self.staleness not in STALENESS_FUNCTIONS:
            out.append(("staleness", f"must be one of: {', '.join(STALENESS_FUNCTIONS)}"))
        if self.staleness_a < 0:
            out.append(("staleness_a", "must be >= 0"))
        if self.staleness_b < 0:
            out.append(("staleness_b", "must be >= 0"))
        if self.max_staleness is not None and self.max_staleness < 0:
            out.append(("max_staleness", "must be >= 0 or null (keep every update)"))
        if self.delay_compensation < 0:
            out.append(("delay_compensation", "must be >= 0 (0: off)"))
        return out

    def per_round(self, num_clients: int) -> int:
        return self.updates_per_round or num_clients

    def weight(self, staleness: int) -> float:
        return staleness_weight(self.staleness, staleness, self.staleness_a, self.staleness_b)

    def accepts(self, staleness: int) -> bool:
        return self.max_staleness is None or staleness <= self.max_staleness

    def start(self, model: np.ndarray, num_clients: int) -> ServerState:
        return ServerState(model=model.copy())

    def receive(self, state: ServerState, arrival: Arrival) -> bool:
        """Take one accepted arrival; True when the model changed (a new version)."""
        raise NotImplementedError

    def update_factor(self, staleness: int, block: int) -> float:
        """An additive rule's multiple of an update ``staleness`` versions old in a step
        of ``block`` updates (under CKKS, the plaintext the server multiplies by)."""
        raise NotImplementedError(f"strategy={self.name} is not additive")

    def corrected(self, state: ServerState, arrival: Arrival) -> np.ndarray:
        """The arrival's update, delay-compensated against the model it will change."""
        return compensate(arrival.update, state.model - arrival.base, self.delay_compensation)


@HORIZONTAL_STRATEGIES.register("fedasync")
@dataclasses.dataclass(frozen=True)
class FedAsync(AsyncSpec):
    """Each arriving model mixed in at once, weighted by its staleness (Xie et al. 2019)."""

    #: α, the mixing rate of a fresh update.
    alpha: float = 0.6

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not 0 < self.alpha <= 1:
            out.append(("alpha", "must be in (0, 1]"))
        return out

    def receive(self, state: ServerState, arrival: Arrival) -> bool:
        mix = self.alpha * self.weight(arrival.staleness)
        local = arrival.base + self.corrected(state, arrival)
        state.model = (1.0 - mix) * state.model + mix * local
        state.version += 1
        return True


@HORIZONTAL_STRATEGIES.register("easgd")
@dataclasses.dataclass(frozen=True)
class Easgd(AsyncSpec):
    """Elastic averaging: clients keep their models, tied to the center by ``rho``.

    A client trains its own model, then moves it ``rho`` of the way toward the center it
    received; its reply carries that same difference, which the server adds to the
    center (times the staleness weight): one elastic force, opposite on each side.
    """

    #: The elastic moving rate per exchange (EASGD's α = ηρ): the share of the gap
    #: between a client's trained model and the center it received.
    rho: float = 0.1

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not 0 < self.rho <= 1:
            out.append(("rho", "must be in (0, 1]"))
        if self.delay_compensation:
            out.append(
                (
                    "delay_compensation",
                    "must be 0 with easgd: it corrects a training update for the model's "
                    "drift, and an EASGD reply is an elastic difference",
                )
            )
        return out

    def receive(self, state: ServerState, arrival: Arrival) -> bool:
        state.model = state.model + self.weight(arrival.staleness) * arrival.update
        state.version += 1
        return True

    def local_start(self, model: nn.Module, context: Context) -> StateDict:
        """The node trains its own model (the center it first received, at first); the
        center it received now is what the elastic step pulls toward."""
        center = {name: value.clone() for name, value in model.state_dict().items()}
        if (own := context.state.array_records.get(ELASTIC_MODEL)) is not None:
            model.load_state_dict(own.to_torch_state_dict())
        return center

    def local_reply(self, trained: StateDict, started: Any, context: Context) -> StateDict:
        return elastic_exchange(trained, started, context, self.rho)


@dataclasses.dataclass(frozen=True)
class _Buffered(AsyncSpec):
    """Step the model once every ``buffer_size`` arrivals (None: num_clients)."""

    buffer_size: int | None = 5

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.buffer_size is not None and self.buffer_size < 1:
            out.append(("buffer_size", "must be >= 1"))
        return out

    def block_size(self, num_clients: int) -> int:
        """Updates per step (K)."""
        return self.buffer_size or num_clients

    def start(self, model: np.ndarray, num_clients: int) -> ServerState:
        return ServerState(model=model.copy(), block=self.block_size(num_clients))

    def receive(self, state: ServerState, arrival: Arrival) -> bool:
        state.buffer.append(
            dataclasses.replace(arrival, local=arrival.base + self.corrected(state, arrival))
        )
        if len(state.buffer) < state.block:
            return False
        weighted = [self.weight(a.staleness) * a.update for a in state.buffer]
        mean = np.sum(weighted, axis=0) / len(weighted)
        state.buffer = []
        self.step(state, mean)
        state.version += 1
        return True

    def step(self, state: ServerState, mean_update: np.ndarray) -> None:
        raise NotImplementedError


@HORIZONTAL_STRATEGIES.register("fedbuff")
@dataclasses.dataclass(frozen=True)
class FedBuff(_Buffered):
    """Buffered asynchronous aggregation (Nguyen et al. 2022): a server step every K
    arrivals, on their staleness-weighted mean update. The step is additive,
    ``w ← w + Σ (η·s(τ_k)/K)·Δ_k``, so under CKKS the server computes it on encrypted
    updates (:mod:`fedpriv.crypto.offset`)."""

    additive: ClassVar[bool] = True
    staleness: str = "polynomial"  # s(τ) = 1/sqrt(1 + τ), the paper's choice
    #: η, the server's step size on the mean update.
    server_lr: float = 1.0

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not self.server_lr > 0:
            out.append(("server_lr", "must be > 0"))
        return out

    def step(self, state: ServerState, mean_update: np.ndarray) -> None:
        state.model = state.model + self.server_lr * mean_update

    def update_factor(self, staleness: int, block: int) -> float:
        return self.server_lr * self.weight(staleness) / block


@HORIZONTAL_STRATEGIES.register("bmuf")
@dataclasses.dataclass(frozen=True)
class Bmuf(_Buffered):
    """Blockwise model-update filtering (Chen & Huo 2016): block momentum on the mean
    update of each block of ``buffer_size`` arrivals (null: num_clients)."""

    buffer_size: int | None = None
    block_momentum: float = 0.9
    block_lr: float = 1.0
    nesterov: bool = True

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not 0 <= self.block_momentum < 1:
            out.append(("block_momentum", "must be in [0, 1)"))
        if not self.block_lr > 0:
            out.append(("block_lr", "must be > 0"))
        return out

    def start(self, model: np.ndarray, num_clients: int) -> ServerState:
        state = super().start(model, num_clients)
        state.anchor, state.momentum = model.copy(), np.zeros_like(model)
        return state

    def step(self, state: ServerState, mean_update: np.ndarray) -> None:
        assert state.anchor is not None and state.momentum is not None
        # G is the block's mean model minus the model its clients started from.
        state.momentum = self.block_momentum * state.momentum + self.block_lr * mean_update
        state.anchor = state.anchor + state.momentum
        state.model = (
            state.anchor + self.block_momentum * state.momentum if self.nesterov else state.anchor
        )


def elastic_exchange(
    trained: StateDict, center: StateDict, context: Context, rho: float
) -> StateDict:
    """EASGD's elastic step on a node. The difference ``rho·(trained − center)`` pulls
    the node's own model toward the center it received (kept in ``context.state`` for
    its next exchange) and is what the center moves by: the reply is ``center + diff``,
    so the server adds the same difference with the opposite sign."""
    own, reply = {}, {}
    for name, value in trained.items():
        if not value.is_floating_point():
            own[name] = reply[name] = value
            continue
        diff = rho * (value - center[name])
        own[name], reply[name] = value - diff, center[name] + diff
    context.state[ELASTIC_MODEL] = ArrayRecord(own)
    return reply
