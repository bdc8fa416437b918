"""``swarm.*``: how peers are connected, how they merge, and what a sync waits for."""

from __future__ import annotations

import dataclasses

from fedpriv.config import ExperimentConfig
from fedpriv.errors import ConfigError
from fedpriv.families import StrategySpec
from fedpriv.merge import MergeRule, merge_choices, merge_rule
from fedpriv.registry import Registry, Spec
from fedpriv.strategies.swarm.topology import TOPOLOGIES

MODES = ("gossip", "leader", "dinno")
MIXING = ("metropolis", "data_size")
#: Leader mode: the rules a leader may merge the peers' models with.
MERGES = merge_choices("mean", "weighted_mean", "coordinate_median", "trimmed_mean")
ELECTIONS = ("rotating", "random")


@dataclasses.dataclass(frozen=True)
class SwarmSettings(Spec):
    """The swarm of one experiment (``family=swarm``): one peer per client."""

    #: ``gossip`` (decentralized SGD), ``leader`` (an elected peer merges), ``dinno`` (ADMM).
    mode: str = "gossip"
    topology: str = "ring"
    #: Neighbours per peer for ``random_regular``; lattice degree for ``small_world``.
    degree: int = 3
    #: Rewiring probability of ``small_world``.
    rewire: float = 0.2
    #: Draw a new graph every sync (seeded by the round) instead of one for the run.
    redraw: bool = False
    #: Gossip weights: ``metropolis`` (Metropolis-Hastings) or ``data_size``.
    mixing: str = "metropolis"
    #: Leader mode: how the leader merges the peers' models.
    merge: str = "mean"
    #: Fraction cut from each end per coordinate by ``trimmed_mean``.
    trim: float = 0.1
    #: Leader mode: ``rotating`` over live peers, or ``random`` (seeded, checked by peers).
    election: str = "rotating"
    #: Peers that must answer for a sync to count; fewer stops the run. Null: all.
    min_peers: int | None = None
    #: Measure the consensus distance each sync (a CKKS secure sum of the peers' models:
    #: each peer learns the average model, the relay nothing; two extra exchanges).
    consensus: bool = True
    #: DiNNO: penalty ρ of the consensus constraint.
    rho: float = 0.1
    #: DiNNO: local epochs of primal steps in sync 1, added per sync, and the cap.
    primal_epochs: int = 1
    primal_growth: float = 0.5
    primal_max: int = 4

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for field, allowed in (
            ("mode", MODES),
            ("topology", TOPOLOGIES),
            ("mixing", MIXING),
            ("merge", MERGES),
            ("election", ELECTIONS),
        ):
            if getattr(self, field) not in allowed:
                out.append((field, f"must be one of: {', '.join(allowed)}"))
        if self.degree < 1:
            out.append(("degree", "must be >= 1"))
        if not 0.0 <= self.rewire <= 1.0:
            out.append(("rewire", "must be in [0, 1]"))
        if not 0.0 <= self.trim < 0.5:
            out.append(("trim", "must be in [0, 0.5)"))
        if self.min_peers is not None and self.min_peers < 1:
            out.append(("min_peers", "must be >= 1 or null (all peers)"))
        if not self.rho > 0:
            out.append(("rho", "must be > 0"))
        if self.primal_epochs < 1 or self.primal_max < self.primal_epochs:
            out.append(("primal_epochs", "must be >= 1 and <= swarm.primal_max"))
        if self.primal_growth < 0:
            out.append(("primal_growth", "must be >= 0"))
        return out

    def required_peers(self, peers: int) -> int:
        return peers if self.min_peers is None else self.min_peers

    def primal_epochs_at(self, sync: int) -> int:
        """DiNNO's adaptive schedule: more primal epochs as communication rounds go on."""
        return min(self.primal_max, self.primal_epochs + int((sync - 1) * self.primal_growth))

    def merge_rule(self) -> MergeRule:
        """The rule ``swarm.merge`` names, cutting ``swarm.trim`` if it trims."""
        return merge_rule(self.merge, trim=self.trim)


#: Swarm strategies (``strategy=<name>`` with ``family=swarm``).
SWARM_STRATEGIES: Registry[StrategySpec] = Registry("swarm strategy")


@SWARM_STRATEGIES.register("swarm")
@dataclasses.dataclass(frozen=True)
class Swarm(StrategySpec):
    """Decentralized learning: peers merge with each other; the server only relays."""

    def planned_epochs(self, config: ExperimentConfig) -> int:
        settings = swarm_settings(config)
        if settings.mode == "dinno":  # more primal epochs as syncs go on
            return sum(settings.primal_epochs_at(sync) for sync in range(1, config.rounds + 1))
        return super().planned_epochs(config)


def swarm_settings(config: ExperimentConfig) -> SwarmSettings:
    """The ``swarm.*`` settings of a ``family=swarm`` config."""
    settings = config.family_settings
    if not isinstance(settings, SwarmSettings):
        raise ConfigError(f"family={config.family} has no swarm.* settings")
    return settings
