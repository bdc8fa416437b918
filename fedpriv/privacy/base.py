"""Privacy choices (``privacy=<name>``): what each client and the server do for DP.

A privacy spec contributes, without branches inside strategies:

* a local trainer for the client (plain SGD, or Opacus DP-SGD),
* Flower client mods (the privacy ledger, client-side clipping),
* a Strategy -> Strategy wrapper on the server (Flower's central-DP wrappers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp.strategy import Strategy as FlowerStrategy
from torch import nn

from fedpriv.registry import Registry, Spec
from fedpriv.training import TrainStats, train_local


class PrivacySpec(Spec):
    """Base of the privacy options; the defaults are 'no privacy'."""

    def local_dp(self) -> Any:
        """The local DP-SGD settings (a :class:`~fedpriv.privacy.dp_sgd.DpSgd`), or None."""
        return None

    def central_dp(self) -> Any:
        """The central (user-level) DP settings (a ``Central``), or None."""
        return None

    def problems_for(self, *, num_clients: int, strategy: Spec) -> list[tuple[str, str]]:
        """Problems that depend on the rest of the experiment."""
        out = []
        for prefix, part in (("local.", self.local_dp()), ("central.", self.central_dp())):
            if part is not None and part is not self:
                problems = part.problems_for(num_clients=num_clients, strategy=strategy)
                out += [(prefix + field, rule) for field, rule in problems]
        return out

    def client_mods(self, config: Any) -> list[Callable[..., Any]]:
        """Flower mods for every ClientApp handler (``config``: the experiment)."""
        return [
            mod
            for part in (self.local_dp(), self.central_dp())
            if part is not None
            for mod in part.client_mods(config)
        ]

    def evidence_problem(self, metrics: Mapping[str, Any]) -> str | None:
        """Why a train reply's metrics do not prove the client applied this mode's
        client-side privacy (None: they do, or the mode asks nothing of clients)."""
        local = self.local_dp()
        return None if local is None else local.evidence_problem(metrics)

    def weigh(self, reply: Message) -> None:
        """Server side, before a train reply is checked: set its aggregation weight where
        this mode decides it (central DP: 1 for every client, whatever the client sent)."""
        central = self.central_dp()
        if central is not None:
            central.weigh(reply)

    def weight_key(self) -> str:
        """The reply metric the aggregate is weighted by (uniform under central DP)."""
        central = self.central_dp()
        return "num-examples" if central is None else central.weight_key()

    def check_clients(self, sizes: list[int]) -> None:
        """Checks that need the clients' sample counts (raise ConfigError)."""
        local = self.local_dp()
        if local is not None:
            local.check_clients(sizes, "privacy.local" if local is not self else "privacy")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model as this privacy mode trains it (DP-SGD may fix unsupported layers)."""
        local = self.local_dp()
        return model if local is None else local.prepare_model(model)

    def train(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        train: Any,
        *,
        seed: int,
        proximal_mu: float = 0.0,
        planned_steps: int,
        after_step: Callable[[], None] | None = None,
        max_steps: int | None = None,
    ) -> tuple[TrainStats, dict[str, float | int]]:
        """Local training: DP-SGD when local DP is on, else plain SGD. Returns the
        statistics and extra reply metrics (what the privacy ledger needs).
        ``after_step``: a data-independent update after each step (costs no privacy);
        ``max_steps``: stop early (the ledger counts the steps that ran)."""
        local = self.local_dp()
        if local is not None:
            return local.train(
                model,
                x,
                y,
                train,
                seed=seed,
                proximal_mu=proximal_mu,
                planned_steps=planned_steps,
                after_step=after_step,
                max_steps=max_steps,
            )
        stats = train_local(
            model,
            x,
            y,
            train,
            seed=seed,
            proximal_mu=proximal_mu,
            after_step=after_step,
            max_steps=max_steps,
        )
        return stats, {}

    def wrap_strategy(self, strategy: FlowerStrategy, num_sampled: int) -> FlowerStrategy:
        """The server strategy, wrapped for central DP where chosen."""
        central = self.central_dp()
        return strategy if central is None else central.wrap_strategy(strategy, num_sampled)


PRIVACY: Registry[PrivacySpec] = Registry("privacy mode")


@PRIVACY.register("none")
@dataclasses.dataclass(frozen=True)
class NoPrivacy(PrivacySpec):
    """No differential privacy: clients send their plain updates."""
