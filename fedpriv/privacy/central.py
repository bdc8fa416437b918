"""Central, user-level DP (DP-FedAvg, McMahan et al. 2018) with Flower's own wrappers.

Each client's model update is clipped to ``clipping_norm`` (on the server, or on the
client with Flower's clipping mod), the uniform mean of the clipped updates gets
Gaussian noise of std ``noise_multiplier × clipping_norm / clients per round``. One
user's whole data changes the aggregate by at most ``clipping_norm / m``, so ε is
user-level. Weights are uniform: example-weighted means would let a large client move
the aggregate further than the noise is sized for.

Accounting: Opacus' RDP accountant composes one Gaussian release per round with
sampling rate 1. Flower samples a fixed number of clients without replacement, which
is not Poisson sampling, so no amplification by sampling is claimed; the ε reported is
an upper bound that holds for what ran.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.serverapp import strategy as flwr_strategies

from fedpriv.privacy.accounting import epsilon
from fedpriv.privacy.base import PRIVACY, PrivacySpec
from fedpriv.privacy.dp_sgd import DpSgd
from fedpriv.registry import Spec

#: The reply metric that weights the aggregate uniformly under central DP.
UNIFORM_WEIGHT = "dp-weight"
#: Strategies whose aggregate is a uniform mean Flower's DP wrappers can noise.
CENTRAL_STRATEGIES = ("fedavg", "fedprox", "fedavgm")

_WRAPPERS: Mapping[tuple[str, str], Callable[..., flwr_strategies.Strategy]] = {
    ("server", "fixed"): flwr_strategies.DifferentialPrivacyServerSideFixedClipping,
    ("client", "fixed"): flwr_strategies.DifferentialPrivacyClientSideFixedClipping,
    ("server", "adaptive"): flwr_strategies.DifferentialPrivacyServerSideAdaptiveClipping,
    ("client", "adaptive"): flwr_strategies.DifferentialPrivacyClientSideAdaptiveClipping,
}


def uniform_weight_mod(
    msg: Message, context: Context, call_next: Callable[..., Message]
) -> Message:
    """Client mod: mark a train reply with weight 1, so the server's mean is uniform."""
    reply = call_next(msg, context)
    if msg.metadata.message_type.startswith("train") and reply.has_content():
        for metrics in reply.content.metric_records.values():
            metrics[UNIFORM_WEIGHT] = 1
    return reply


@PRIVACY.register("central")
@dataclasses.dataclass(frozen=True)
class Central(PrivacySpec):
    """Central DP settings (``privacy=central``)."""

    noise_multiplier: float = 0.8
    #: Clipping norm of each client's update (adaptive: the initial norm).
    clipping_norm: float = 0.5
    #: fixed, or adaptive (Andrew et al. 2021: the norm tracks a quantile of update norms).
    clipping: str = "fixed"
    #: Where updates are clipped: server (it sees raw updates) or client.
    side: str = "server"
    #: User-level δ; None: 1 / (10 × num_clients).
    delta: float | None = None
    #: Adaptive clipping: the quantile of update norms to clip at, and its learning rate.
    target_clipped_quantile: float = 0.5
    clip_norm_lr: float = 0.2
    #: Adaptive clipping: noise std on the clipped-count estimate; None: clients/20
    #: (Flower's default). Must exceed noise_multiplier / 2.
    clipped_count_stddev: float | None = None

    def central_dp(self) -> Central:
        return self

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not self.noise_multiplier > 0:
            out.append(("noise_multiplier", "must be > 0 (e.g. 0.8)"))
        if not self.clipping_norm > 0:
            out.append(("clipping_norm", "must be > 0 (e.g. 0.5)"))
        if self.clipping not in ("fixed", "adaptive"):
            out.append(("clipping", "must be one of: fixed, adaptive"))
        if self.side not in ("server", "client"):
            out.append(("side", "must be one of: server, client"))
        if self.delta is not None and not 0 < self.delta < 1:
            out.append(("delta", "must be in (0, 1), below 1/num_clients"))
        if not 0 < self.target_clipped_quantile < 1:
            out.append(("target_clipped_quantile", "must be in (0, 1)"))
        if not self.clip_norm_lr > 0:
            out.append(("clip_norm_lr", "must be > 0"))
        if self.clipped_count_stddev is not None and not self.clipped_count_stddev > 0:
            out.append(("clipped_count_stddev", "must be > 0 or null"))
        return out

    def problems_for(self, *, num_clients: int, strategy: Spec) -> list[tuple[str, str]]:
        out = []
        if strategy.name not in CENTRAL_STRATEGIES:
            out.append(
                (
                    "noise_multiplier",
                    f"central DP needs a uniform-mean aggregate, and strategy={strategy.name} "
                    f"is not one; use one of: {', '.join(CENTRAL_STRATEGIES)}",
                )
            )
        if self.delta is not None and self.delta >= 1 / num_clients:
            out.append(("delta", f"must be < 1/num_clients = {1 / num_clients:.3g}"))
        if self.clipping == "adaptive":
            sampled = strategy.sampled(num_clients)  # type: ignore[attr-defined]
            stddev = self.clipped_count_stddev or sampled / 20
            if self.noise_multiplier >= 2 * stddev:
                out.append(
                    (
                        "noise_multiplier",
                        f"is too large for adaptive clipping with clipped_count_stddev={stddev:g} "
                        f"({sampled} clients per round): it must be < 2 × clipped_count_stddev; "
                        "raise privacy.clipped_count_stddev or lower noise_multiplier",
                    )
                )
        return out

    def delta_for(self, num_clients: int) -> float:
        return self.delta if self.delta is not None else 1.0 / (10 * num_clients)

    def weight_key(self) -> str:
        return UNIFORM_WEIGHT

    def client_mods(self, config: Any) -> list[Callable[..., Any]]:
        mods: list[Callable[..., Any]] = [uniform_weight_mod]
        if self.side == "client":
            mods.append(fixedclipping_mod if self.clipping == "fixed" else adaptiveclipping_mod)
        return mods

    def wrap_strategy(
        self, strategy: flwr_strategies.Strategy, num_sampled: int
    ) -> flwr_strategies.Strategy:
        wrapper = _WRAPPERS[(self.side, self.clipping)]
        if self.clipping == "fixed":
            return wrapper(
                strategy,
                noise_multiplier=self.noise_multiplier,
                clipping_norm=self.clipping_norm,
                num_sampled_clients=num_sampled,
            )
        return wrapper(
            strategy,
            noise_multiplier=self.noise_multiplier,
            num_sampled_clients=num_sampled,
            initial_clipping_norm=self.clipping_norm,
            target_clipped_quantile=self.target_clipped_quantile,
            clip_norm_lr=self.clip_norm_lr,
            clipped_count_stddev=self.clipped_count_stddev,
        )

    def epsilon(self, releases: int, num_clients: int) -> float:
        """User-level ε after ``releases`` noisy aggregates (RDP, no sampling amplification)."""
        return epsilon([(self.noise_multiplier, 1.0, releases)] if releases else [],
                       self.delta_for(num_clients), "rdp")  # fmt: skip


@PRIVACY.register("dp_sgd+central")
@dataclasses.dataclass(frozen=True)
class DpSgdAndCentral(PrivacySpec):
    """Both: sample-level DP-SGD on each client and user-level DP at the server."""

    local: DpSgd = dataclasses.field(default_factory=lambda: DpSgd(noise_multiplier=1.0))
    central: Central = dataclasses.field(default_factory=Central)

    def local_dp(self) -> DpSgd:
        return self.local

    def central_dp(self) -> Central:
        return self.central
