"""Horizontal strategies by name (``strategy=<name>``), each a spec that builds a Flower strategy.

Where Flower has the algorithm, fedpriv uses Flower's class; the spec only names its
parameters, checks their ranges and sets sampling so every expected node is waited for.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Context
from flwr.serverapp import strategy as flwr_strategies
from torch import nn

from fedpriv.families import StrategySpec
from fedpriv.merge import merge_rule
from fedpriv.registry import Registry
from fedpriv.strategies.horizontal.aggregators import ElementwiseMerge

#: A model's parameters and buffers by name, as torch's ``state_dict`` holds them.
StateDict = dict[str, torch.Tensor]

__all__ = ["HORIZONTAL_STRATEGIES", "HorizontalSpec"]


@dataclasses.dataclass(frozen=True)
class HorizontalSpec(StrategySpec):
    """Common parameters: the fraction of clients sampled for training each round."""

    flower_class: ClassVar[Callable[..., flwr_strategies.Strategy]] = flwr_strategies.FedAvg
    linear: ClassVar[bool] = True  # FedAvg, and any strategy that does not say otherwise
    uniform_mean: ClassVar[bool] = True

    fraction_train: float = 1.0

    def problems(self) -> list[tuple[str, str]]:
        if not 0.0 < self.fraction_train <= 1.0:
            return [("fraction_train", "must be in (0, 1]")]
        return []

    def state_parts(self) -> int:
        """Model-sized parts of the server's state (encrypted aggregation carries them all)."""
        return 1

    def contribution(self, state: list[np.ndarray], local: np.ndarray) -> list[np.ndarray]:
        """One client's share of the next server state: the example-weighted mean of all
        shares is that state. Only linear strategies have one; under CKKS the key
        holders run it, since the server cannot compute on what it cannot read.

        ``state``: the current state's parts (model first), ``local``: the client's
        trained model, all flat. FedAvg and FedProx: the next model is the mean model.
        """
        return [local]

    def sampled(self, num_clients: int) -> int:
        """Clients trained per round."""
        return max(1, math.ceil(self.fraction_train * num_clients))

    # -- node side: a strategy whose clients keep more than the global model ------------
    def local_start(self, model: nn.Module, context: Context) -> Any:
        """Before a node trains ``model`` (the global model it received): load what this
        strategy trains instead, and return what :meth:`local_reply` needs. Default:
        train the global model itself."""
        return None

    def local_reply(self, trained: StateDict, started: Any, context: Context) -> StateDict:
        """What a node's reply carries after training (``started``: what
        :meth:`local_start` returned). Default: the trained model."""
        return trained

    def flower_kwargs(self) -> dict[str, Any]:
        """The spec's own parameters, as Flower's constructor names them."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "fraction_train"
        }

    def build(self, weighted_by_key: str = "num-examples") -> flwr_strategies.Strategy:
        """A fresh Flower strategy that trains every node its grid lists (fedpriv
        samples the clients, seeded: :mod:`.sampling`); federated evaluation is off (the
        server evaluates).

        ``weighted_by_key`` names the reply metric that weights the mean (central DP
        weights uniformly).
        """
        return self.flower_class(
            fraction_train=1.0,
            min_train_nodes=1,
            min_available_nodes=1,
            min_evaluate_nodes=0,
            weighted_by_key=weighted_by_key,
            **self.flower_kwargs(),
        )


HORIZONTAL_STRATEGIES: Registry[HorizontalSpec] = Registry("strategy")


@HORIZONTAL_STRATEGIES.register("fedavg")
@dataclasses.dataclass(frozen=True)
class FedAvg(HorizontalSpec):
    """Example-weighted mean of client models (McMahan et al. 2017)."""


@HORIZONTAL_STRATEGIES.register("fedprox")
@dataclasses.dataclass(frozen=True)
class FedProx(HorizontalSpec):
    """FedAvg whose clients add (mu/2)·||w - w_global||² to their loss (Li et al. 2020)."""

    flower_class: ClassVar[Callable[..., flwr_strategies.Strategy]] = flwr_strategies.FedProx
    proximal_mu: float = 0.01

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.proximal_mu < 0:
            out.append(("proximal_mu", "must be >= 0 (0 is FedAvg)"))
        return out


@HORIZONTAL_STRATEGIES.register("fedavgm")
@dataclasses.dataclass(frozen=True)
class FedAvgM(HorizontalSpec):
    """FedAvg with server momentum on the averaged update (Hsu et al. 2019)."""

    flower_class: ClassVar[Callable[..., flwr_strategies.Strategy]] = flwr_strategies.FedAvgM
    server_learning_rate: float = 1.0
    server_momentum: float = 0.9

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.server_learning_rate <= 0:
            out.append(("server_learning_rate", "must be > 0"))
        if not 0.0 <= self.server_momentum < 1.0:
            out.append(("server_momentum", "must be in [0, 1)"))
        return out

    def state_parts(self) -> int:
        return 2 if self.server_momentum > 0 else 1

    def contribution(self, state: list[np.ndarray], local: np.ndarray) -> list[np.ndarray]:
        """Flower's FedAvgM rule, share by share: the pseudo-gradient ``w - w_k`` (plus
        ``momentum × m``) averages to Flower's momentum vector, and ``w - lr × step``
        to its next model; the momentum starts at zero, as Flower's first round does."""
        weights = state[0]
        step = weights - local
        if self.server_momentum > 0:
            step = self.server_momentum * state[1] + step
            return [weights - self.server_learning_rate * step, step]
        return [weights - self.server_learning_rate * step]


@dataclasses.dataclass(frozen=True)
class _FedOpt(HorizontalSpec):
    """Adaptive server optimizers on the pseudo-gradient (Reddi et al. 2021)."""

    linear: ClassVar[bool] = False
    uniform_mean: ClassVar[bool] = False
    eta: float = 0.1
    tau: float = 1e-3

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.eta <= 0:
            out.append(("eta", "must be > 0 (the server learning rate)"))
        if self.tau <= 0:
            out.append(("tau", "must be > 0 (adaptivity, e.g. 1e-3)"))
        return out


@dataclasses.dataclass(frozen=True)
class _FedOptWithBetas(_FedOpt):
    beta_1: float = 0.9
    beta_2: float = 0.99

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        for name in ("beta_1", "beta_2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                out.append((name, "must be in [0, 1)"))
        return out


@HORIZONTAL_STRATEGIES.register("fedadam")
@dataclasses.dataclass(frozen=True)
class FedAdam(_FedOptWithBetas):
    flower_class: ClassVar[Callable[..., flwr_strategies.Strategy]] = flwr_strategies.FedAdam


@HORIZONTAL_STRATEGIES.register("fedyogi")
@dataclasses.dataclass(frozen=True)
class FedYogi(_FedOptWithBetas):
    flower_class: ClassVar[Callable[..., flwr_strategies.Strategy]] = flwr_strategies.FedYogi
    eta: float = 0.01


@HORIZONTAL_STRATEGIES.register("fedadagrad")
@dataclasses.dataclass(frozen=True)
class FedAdagrad(_FedOpt):
    flower_class: ClassVar[Callable[..., flwr_strategies.Strategy]] = flwr_strategies.FedAdagrad


@HORIZONTAL_STRATEGIES.register("fedmedian")
@dataclasses.dataclass(frozen=True)
class FedMedian(HorizontalSpec):
    """Coordinate-wise median of client models (Yin et al. 2018)."""

    flower_class: ClassVar[Callable[..., flwr_strategies.Strategy]] = flwr_strategies.FedMedian
    linear: ClassVar[bool] = False
    uniform_mean: ClassVar[bool] = False


@HORIZONTAL_STRATEGIES.register("fedtrimmedavg")
@dataclasses.dataclass(frozen=True)
class FedTrimmedAvg(HorizontalSpec):
    """Coordinate-wise mean after cutting the ``beta`` fraction at each end (Yin et al. 2018)."""

    flower_class: ClassVar[Callable[..., flwr_strategies.Strategy]] = flwr_strategies.FedTrimmedAvg
    linear: ClassVar[bool] = False
    uniform_mean: ClassVar[bool] = False
    beta: float = 0.2

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not 0.0 <= self.beta < 0.5:
            out.append(("beta", "must be in [0, 0.5)"))
        return out


@HORIZONTAL_STRATEGIES.register("krum")
@dataclasses.dataclass(frozen=True)
class Krum(HorizontalSpec):
    """The client model closest to its n - f - 2 neighbours (Blanchard et al. 2017)."""

    flower_class: ClassVar[Callable[..., flwr_strategies.Strategy]] = flwr_strategies.Krum
    linear: ClassVar[bool] = False
    uniform_mean: ClassVar[bool] = False
    num_malicious_nodes: int = 0

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.num_malicious_nodes < 0:
            out.append(("num_malicious_nodes", "must be >= 0"))
        return out

    def problems_for(self, num_clients: int) -> list[tuple[str, str]]:
        sampled = self.sampled(num_clients)
        if sampled - self.num_malicious_nodes - 2 < 1:
            return [
                (
                    "num_malicious_nodes",
                    f"leaves no neighbours to score: Krum needs clients per round "
                    f"({sampled}) > num_malicious_nodes + 2",
                )
            ]
        return []


@HORIZONTAL_STRATEGIES.register("multikrum")
@dataclasses.dataclass(frozen=True)
class MultiKrum(Krum):
    """Average of the ``num_nodes_to_select`` best Krum-scored models (El Mhamdi et al. 2018)."""

    flower_class: ClassVar[Callable[..., flwr_strategies.Strategy]] = flwr_strategies.MultiKrum
    num_nodes_to_select: int = 2

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.num_nodes_to_select < 1:
            out.append(("num_nodes_to_select", "must be >= 1"))
        return out

    def problems_for(self, num_clients: int) -> list[tuple[str, str]]:
        out = super().problems_for(num_clients)
        if self.num_nodes_to_select > self.sampled(num_clients):
            out.append(
                (
                    "num_nodes_to_select",
                    f"must be <= clients per round ({self.sampled(num_clients)})",
                )
            )
        return out


@dataclasses.dataclass(frozen=True)
class _Elementwise(HorizontalSpec):
    flower_class: ClassVar[Callable[..., flwr_strategies.Strategy]] = ElementwiseMerge
    linear: ClassVar[bool] = False
    uniform_mean: ClassVar[bool] = False
    #: The rule's name in :data:`fedpriv.merge.MERGE_RULES`.
    rule: ClassVar[str]

    def flower_kwargs(self) -> dict[str, Any]:
        return {"merge": merge_rule(self.rule)}


@HORIZONTAL_STRATEGIES.register("max")
@dataclasses.dataclass(frozen=True)
class Max(_Elementwise):
    """Element-wise maximum of client models (the Max unification rule)."""

    rule: ClassVar[str] = "max"


@HORIZONTAL_STRATEGIES.register("absmax")
@dataclasses.dataclass(frozen=True)
class AbsMax(_Elementwise):
    """Element-wise value of largest magnitude over client models (the AbsMax rule)."""

    rule: ClassVar[str] = "absmax"
